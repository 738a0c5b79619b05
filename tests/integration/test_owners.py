"""What the list says about each session's project and asset (issue 22):
policies select by project_ids and asset_vks, protect keeps by them, and a
session whose entry does not say its project is never selected by project
and always kept by a protect list by project (fail safe)."""

import json
import subprocess

from harness import APPKEY, BINARY, DaemonTest
from gateway_sim import IN_PROGRESS, STREAM_FAILED


class OwnerTest(DaemonTest):
    def policy_file(self, policies, gateway="", top="", timeout="2s", poll_interval="300ms"):
        """Writes the policy file: gateway url, appkey and timeout, then the
        lines of `gateway`; poll_interval, state_file, the lines of `top`;
        the policies (lines of a YAML list)."""
        text = ("gateway:\n  url: %s\n  appkey: %s\n  timeout: %s\n%s"
                "poll_interval: %s\nstate_file: %s\n%s"
                "policies:\n%s") % (self.url, APPKEY, timeout, gateway, poll_interval, self.state_file, top,
                                    policies)
        with open(self.config_file, "w") as f:
            f.write(text)


class Owners(OwnerTest):
    def setUp(self):
        super().setUp()
        gw = self.gw
        # Three projects and one personal asset, all failed streams, in one
        # account-wide list.
        self.flagship = [gw.add_session("f%d" % i, STREAM_FAILED, project_id="flagship") for i in range(2)]
        self.kiosk_a = [gw.add_session("ka%d" % i, STREAM_FAILED, project_id="kiosk-a") for i in range(2)]
        self.kiosk_b = [gw.add_session("kb%d" % i, STREAM_FAILED, project_id="kiosk-b") for i in range(2)]
        self.asset = [gw.add_session("as%d" % i, STREAM_FAILED, asset_vk="asset-9") for i in range(2)]
        self.other_asset = gw.add_session("ox", STREAM_FAILED, asset_vk="asset-1")
        self.live = gw.add_session("live", IN_PROGRESS, project_id="kiosk-a")

    def config(self, policies, protect=""):
        self.policy_file(policies, top=protect)

    def test_select_by_project_glob_and_by_asset_protect_by_project(self):
        self.config("  - {name: kiosks, kind: failed, after: 0s, project_ids: ['kiosk-*']}\n"
                    "  - {name: asset9, kind: failed, after: 0s, asset_vks: [asset-9]}\n"
                    "  - {name: rest, kind: failed, after: 0s, project_ids: ['*']}\n",
                    protect="protect:\n  project_ids: [flagship]\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        # kiosk-a and kiosk-b by glob, asset-9 by key; flagship protected;
        # asset-1 has no project, so project_ids ['*'] does not select it.
        self.assertCountEqual(self.gw.closed_ids(), self.kiosk_a + self.kiosk_b + self.asset)
        by_id = {l["session_id"]: l for l in run.reclaims("closed")}
        self.assertEqual(by_id[self.kiosk_a[0]]["policy"], "kiosks")
        self.assertEqual(by_id[self.kiosk_a[0]]["project_id"], "kiosk-a")
        self.assertEqual(by_id[self.kiosk_a[0]]["create_type"], "0")
        self.assertEqual(by_id[self.asset[0]]["policy"], "asset9")
        self.assertEqual(by_id[self.asset[0]]["asset_vk"], "asset-9")
        self.assertEqual(by_id[self.asset[0]]["create_type"], "1")
        self.assertNotIn("project_id", by_id[self.asset[0]])
        self.assertEqual(run.summaries()[-1]["protected"], "2")
        self.assert_gateway_clean()

    def test_protect_by_project_keeps_everything_when_the_gateway_does_not_say(self):
        self.gw.owner_fields = False   # as the English page: no project fields
        self.config("  - {name: all-failed, kind: failed, after: 0s}\n",
                    protect="protect:\n  project_ids: [flagship]\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        warned = [l for l in run.logs if "protect.project_ids is set but the list does not say the project of"
                  in l.get("msg", "")]
        self.assertEqual(len(warned), 1, run)
        self.assertEqual(warned[0]["level"], "warning")
        self.assertIn("of 9 sessions; they are kept", warned[0]["msg"])

    def test_a_project_selector_never_selects_a_session_without_a_project(self):
        self.gw.owner_fields = False
        self.config("  - {name: kiosks, kind: failed, after: 0s, project_ids: ['*']}\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])

    def test_listing_per_project_states_the_project(self):
        # The entries say nothing, but each session came from its project's call.
        self.gw.owner_fields = False
        self.policy_file("  - {name: f, kind: failed, after: 0s}\n",
                         gateway="  project_ids: [flagship, kiosk-a]\n",
                         top="protect:\n  project_ids: [flagship]\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertCountEqual(self.gw.closed_ids(), self.kiosk_a)
        self.assertFalse(any("does not say" in l.get("msg", "") for l in run.logs), run)

    def test_plan_json_carries_the_owner_fields(self):
        self.config("  - {name: f, kind: failed, after: 0s}\n",
                    protect="protect:\n  asset_vks: [asset-9]\n")
        p = subprocess.run([BINARY, "--config", self.config_file, "--plan", "--output", "json",
                            "--log-target", "console"], env=self.env(), capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        rows = {r["IVH_SESSION_ID"]: r for r in map(json.loads, p.stdout.splitlines())}
        self.assertEqual(rows[self.kiosk_a[0]]["IVH_PROJECT_ID"], "kiosk-a")
        self.assertIsNone(rows[self.kiosk_a[0]]["IVH_ASSET_VK"])
        self.assertEqual(rows[self.kiosk_a[0]]["IVH_CREATE_TYPE"], 0)
        self.assertEqual(rows[self.asset[0]]["IVH_DECISION"], "protected")
        # CreateType 0 says the session was made from a project: no asset.
        self.assertEqual(rows[self.kiosk_a[0]]["IVH_DECISION"], "f")
        # A gateway that does not say: protect.asset_vks keeps every session.
        self.gw.owner_fields = False
        p = subprocess.run([BINARY, "--config", self.config_file, "--plan", "--output", "json",
                            "--log-target", "console"], env=self.env(), capture_output=True, text=True,
                           timeout=30)
        rows = {r["IVH_SESSION_ID"]: r for r in map(json.loads, p.stdout.splitlines())}
        self.assertIsNone(rows[self.kiosk_a[0]]["IVH_PROJECT_ID"])
        self.assertIsNone(rows[self.kiosk_a[0]]["IVH_CREATE_TYPE"])
        self.assertEqual(rows[self.kiosk_a[0]]["IVH_DECISION"], "protected")
        self.assertIn("does not say its asset", rows[self.kiosk_a[0]]["IVH_REASON"])
        self.assertEqual(self.gw.calls_to("closesession"), [])

    def test_empty_selector_refused_with_position(self):
        self.config("  - {name: f, kind: failed, after: 0s, project_ids: []}\n"
                    "  - {name: g, kind: failed, after: 0s, asset_vks: ~}\n"
                    "  - {name: h, kind: failed, after: 0s, projectids: [x]}\n")
        p = subprocess.run([BINARY, "--config", self.config_file, "--check-config"], env=self.env(),
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 78, p)
        self.assertRegex(p.stderr, r"policy.yaml:\d+:\d+: policies\[0\]\.project_ids: is an empty list, which "
                         r"would select every project; omit project_ids to match every project")
        self.assertRegex(p.stderr, r"policy.yaml:\d+:\d+: policies\[1\]\.asset_vks: is empty \(null\)")
        self.assertRegex(p.stderr, r"projectids.*did you mean 'project_ids'")


class HostileOwners(DaemonTest):
    def test_a_project_field_of_the_wrong_type_makes_the_entry_malformed(self):
        a = self.gw.add_session("a", STREAM_FAILED, project_id="p", VirtualmanProjectId=7)
        b = self.gw.add_session("b", STREAM_FAILED, project_id="p", CreateType="0")
        c = self.gw.add_session("c", STREAM_FAILED, project_id="p")
        self.gw.owner_fields = False    # the entries carry only what add_session put there
        self.write_config([("f", "failed", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [c])
        self.assertEqual(run.summaries()[-1]["malformed"], "2")
        self.assertNotIn(a, self.gw.closed_ids())
        self.assertNotIn(b, self.gw.closed_ids())


class CloudClosesOnItsOwn(OwnerTest):
    """The cloud closes an idle started session by itself: one that goes
    between the daemon's list and its close is already_closed, never a
    failure, and never retried."""

    def test_idle_rule_between_list_and_close_is_already_closed(self):
        gw = self.gw
        gw.idle_disconnect_s, gw.idle_close_s = 1.0, 1.5   # seconds on the simulator's clock
        sid = gw.add_session("idle", IN_PROGRESS, started=True)
        gw.latency = 2.0    # the list is answered 2 s after it was read: the close comes later
        self.policy_file("  - {name: old, kind: max_age, after: 0s}\n", timeout="10s", poll_interval="30s",
                         top="recheck_before_close: false\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(gw.idle_closed, [sid])
        closes = gw.calls_to("closesession")
        self.assertEqual(len(closes), 1, "never retried")
        self.assertEqual([l["outcome"] for l in run.reclaims()], ["already_closed"])
        self.assertEqual(run.summaries()[-1]["failed"], "0")

    def test_unknown_endpoint_answers_with_the_envelope(self):
        import urllib.error
        import urllib.request
        req = urllib.request.Request(self.url + "/v2/ivh/sessionmanager/sessionmanagerservice/nosuch",
                                     data=b"{}", headers={"Content-Type": "application/json"})
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        self.assertEqual(e.exception.code, 404)
        doc = json.loads(e.exception.read())
        self.assertEqual(doc["Header"]["Code"], 100001)


class OwnerRedTeam(OwnerTest):
    """What the issue-22 red team found: each would close a session a protect
    rule should keep, or stop reclaiming without a word."""

    def protect_flagship(self, policies="  - {name: all, kind: max_age, after: 0s}\n", gateway_extra=""):
        self.policy_file(policies, gateway=gateway_extra,
                         top="recheck_before_close: false\nprotect:\n  project_ids: [flagship]\n")

    def list_body(self, entries):
        return ('{"Header": {"Code": 0, "Message": ""}, "Payload": {"ReqId": "x", "Sessions": [%s]}}'
                % ", ".join(entries)).encode()

    def test_an_empty_project_is_no_project(self):
        self.gw.owner_fields = False
        a = self.gw.add_session("a", IN_PROGRESS, VirtualmanProjectId="", CreateType=0)
        self.protect_flagship()
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        self.assertTrue(any("does not say the project of 1 sessions" in l.get("msg", "") for l in run.logs))
        self.assertIn(a, self.gw.sessions)

    def test_an_owner_field_given_twice_makes_the_entry_malformed(self):
        live = '"UserId": "u", "SessionStatus": 1, "IsSessionStarted": true, "CreateType": 0'
        body = self.list_body([
            '{"SessionId": "b1", %s, "VirtualmanProjectId": "kiosk", "VirtualmanProjectId": "flagship"}' % live,
            '{"SessionId": "b2", %s, "VirtualmanProjectId": "kiosk", "Virtualman\\u0050rojectId": "flagship"}'
            % live,
            '{"SessionId": "b3", "UserId": "u", "SessionStatus": 1, "IsSessionStarted": true, '
            '"CreateType": 0, "CreateType": 1, "VirtualmanProjectId": "kiosk"}',
            '{"SessionId": "b4", %s, "VirtualmanProjectId": "kiosk"}' % live,
        ])
        self.gw.add_fault("listsessionofuin", "garbage", body=body, count=1)
        self.protect_flagship()
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual([c["session_id"] for c in self.gw.calls_to("closesession")], ["b4"])
        self.assertEqual(run.summaries()[-1]["malformed"], "3")

    def test_entry_and_list_call_disagree_the_session_is_kept(self):
        self.gw.owner_fields = False
        # Listed by listsessionofprojectid(flagship), the entry says kiosk.
        a = self.gw.add_session("a", IN_PROGRESS, project_id="flagship", VirtualmanProjectId="kiosk")
        b = self.gw.add_session("b", IN_PROGRESS, project_id="kiosk")
        self.protect_flagship(gateway_extra="  project_ids: [flagship, kiosk]\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [b])
        self.assertNotIn(a, self.gw.closed_ids())

    def test_a_session_listed_by_two_calls_is_never_acted_on(self):
        self.gw.owner_fields = False
        a = self.gw.add_session("a", IN_PROGRESS, project_id="kiosk")
        self.policy_file("  - {name: all, kind: max_age, after: 0s}\n",
                         gateway="  project_ids: [kiosk]\n  asset_vks: [vip-a]\n",
                         top="recheck_before_close: false\nprotect:\n  asset_vks: ['vip-*']\n")
        # The asset listing names the same session too.
        body = self.list_body(['{"SessionId": "%s", "UserId": "a", "SessionStatus": 1, '
                               '"IsSessionStarted": true}' % a])
        self.gw.add_fault("listsessionofassetvk", "garbage", body=body, count=1)
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        self.assertEqual(run.summaries()[-1]["malformed"], "1")

    def test_over_capacity_kept_by_the_fail_safe_says_so(self):
        self.gw.owner_fields = False
        for i in range(3):
            self.gw.add_session("k%d" % i, IN_PROGRESS)
        self.gw.add_session("f", STREAM_FAILED)
        self.protect_flagship(policies="  - {name: oc, kind: over_capacity, capacity: 2}\n")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        warned = [l for l in run.logs if "does not say the project of" in l.get("msg", "")]
        self.assertEqual(len(warned), 1, run)
        self.assertIn("of 4 sessions; they are kept", warned[0]["msg"])

    def test_replaced_session_is_already_closed(self):
        a = self.gw.add_session("a", STREAM_FAILED)
        self.gw.add_fault("closesession", "api_error", session_id=a, code=110022,
                          message="SessionReplaced: closed because another session took its UserId")
        self.write_config([("f", "failed", "0s")])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual([l["outcome"] for l in run.reclaims()], ["already_closed"])
        self.assertEqual(len(self.gw.calls_to("closesession")), 1)
