"""Real TLS against the simulator, with a test CA."""

from harness import DaemonTest
from gateway_sim import STREAM_FAILED


class Tls(DaemonTest):
    tls = True

    def test_https_with_ca_file(self):
        a = self.gw.add_session("u1", STREAM_FAILED)
        self.write_config([("f", "failed", "0s")], gateway_extra="  ca_file: %s\n" % self.pki["ca"])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [a])
        self.assert_gateway_clean()

    def test_untrusted_certificate_is_refused(self):
        self.gw.add_session("u1", STREAM_FAILED)
        self.write_config([("f", "failed", "0s")])   # system trust store only
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 1, run)
        self.assertEqual(self.gw.calls, [])
        self.assertRegex(run.stderr, r"(?i)certificate|SSL")

    def test_localhost_name_is_verified(self):
        a = self.gw.add_session("u1", STREAM_FAILED)
        self.write_config([("f", "failed", "0s")], url="https://localhost:%d" % self.port,
                          gateway_extra="  ca_file: %s\n" % self.pki["ca"])
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.closed_ids(), [a])
