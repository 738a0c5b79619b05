"""A throw-away certificate authority, a server certificate for 127.0.0.1
and localhost, and a client certificate, made with the openssl command line."""

import os
import subprocess


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def make_pki(directory):
    d = os.path.join(directory, "pki")
    os.makedirs(d, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ivh-reclaimd test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
             cwd=d)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        # clientAuth too: etcd's JSON gateway connects to its own gRPC port with this certificate.
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    # A client certificate, for services that ask for one (etcd's client-cert-auth).
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=ivh-reclaimd", cwd=d)
    with open(os.path.join(d, "client.cnf"), "w") as f:
        f.write("extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.pem", "-days", "2", "-extfile", "client.cnf", cwd=d)
    return {"ca": os.path.join(d, "ca.pem"), "server_cert": os.path.join(d, "server.pem"),
            "server_key": os.path.join(d, "server.key"), "client_cert": os.path.join(d, "client.pem"),
            "client_key": os.path.join(d, "client.key")}


if __name__ == "__main__":
    import sys
    print(make_pki(sys.argv[1]))
