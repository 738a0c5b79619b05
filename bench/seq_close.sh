#!/bin/bash
# Baseline 1: what an operator's cron job does. One curl call lists the
# sessions, jq picks the failed ones, then a sequential loop signs each
# request with openssl and closes it with curl. Usage:
#   IVH_ACCESS_TOKEN=... seq_close.sh BASE_URL APPKEY
set -euo pipefail
base=$1 appkey=$2
prefix=/v2/ivh/sessionmanager/sessionmanagerservice

signed_url() {
        local ts sig
        ts=$(date +%s)
        sig=$(printf 'appkey=%s&timestamp=%s' "$appkey" "$ts" |
                openssl dgst -sha256 -hmac "$IVH_ACCESS_TOKEN" -binary | openssl base64 -A |
                sed 's/+/%2B/g; s|/|%2F|g; s/=/%3D/g')
        printf '%s%s/%s?appkey=%s&timestamp=%s&signature=%s' "$base" "$prefix" "$1" "$appkey" "$ts" "$sig"
}

body() {
        printf '{"Header":{},"Payload":{"ReqId":"%s"%s}}' "$(openssl rand -hex 16)" "${1:+,\"SessionId\":\"$1\"}"
}

curl -sf -X POST -H 'Content-Type: application/json;charset=utf-8' -d "$(body)" "$(signed_url listsessionofuin)" |
        jq -r '.Payload.Sessions[]? | select(.SessionStatus == 4) | .SessionId' |
        while read -r id; do
                curl -sf -X POST -H 'Content-Type: application/json;charset=utf-8' -d "$(body "$id")" \
                        "$(signed_url closesession)" >/dev/null
        done
