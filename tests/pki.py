"""A throw-away certificate authority, a server certificate for 127.0.0.1
and localhost, and a client certificate, made with the openssl command line."""

import os
import subprocess


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def _issue(d, name, subject, extensions):
    """NAME.key and NAME.pem, signed by the CA in d, with these extensions."""
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", name + ".key", "-out", name + ".csr", "-subj", subject, cwd=d)
    with open(os.path.join(d, name + ".cnf"), "w") as f:
        f.write(extensions)
    _openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", name + ".pem", "-days", "2", "-extfile", name + ".cnf", cwd=d)


def make_pki(directory):
    d = os.path.join(directory, "pki")
    os.makedirs(d, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ivh-reclaimd test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
             cwd=d)
    # clientAuth too: etcd's JSON gateway connects to its own gRPC port with this certificate.
    _issue(d, "server", "/CN=127.0.0.1",
           "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    # A client certificate, for services that ask for one (etcd's client-cert-auth).
    _issue(d, "client", "/CN=ivh-reclaimd", "extendedKeyUsage=clientAuth\n")
    return {"ca": os.path.join(d, "ca.pem"), "server_cert": os.path.join(d, "server.pem"),
            "server_key": os.path.join(d, "server.key"), "client_cert": os.path.join(d, "client.pem"),
            "client_key": os.path.join(d, "client.key")}


if __name__ == "__main__":
    import sys
    print(make_pki(sys.argv[1]))
