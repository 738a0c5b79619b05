"""The systemd contract: the sd_notify protocol read from a NOTIFY_SOCKET this
test owns, SIGHUP reloads (good and broken files), SIGTERM."""

import os
import signal
import socket
import time

from harness import DaemonTest, wait_for
from gateway_sim import IN_PROGRESS, STREAM_FAILED


class NotifySocket:
    def __init__(self, directory):
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages = []

    def drain(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            for line in data.decode().split("\n"):
                if line:
                    self.messages.append(line)

    def wait_for(self, predicate, what, timeout=10):
        wait_for(lambda: predicate(self.drain()), timeout=timeout, what=what)

    def close(self):
        self.sock.close()


def index(messages, prefix, start=0):
    for i in range(start, len(messages)):
        if messages[i].startswith(prefix):
            return i
    return -1


class Notify(DaemonTest):
    def setUp(self):
        super().setUp()
        self.notify = NotifySocket(self.dir)
        self.addCleanup(self.notify.close)

    def start(self, watchdog_usec=None):
        env = self.env()
        env["NOTIFY_SOCKET"] = self.notify.path
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return self.start_daemon(env=env)

    def test_protocol_in_order(self):
        self.gw.add_session("u1", STREAM_FAILED)
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="300ms")
        p = self.start(watchdog_usec=400000)

        self.notify.wait_for(lambda m: index(m, "STATUS=") >= 0 and index(m, "WATCHDOG=1") >= 0,
                             "READY, STATUS and WATCHDOG")
        p.send_signal(signal.SIGHUP)
        self.notify.wait_for(lambda m: index(m, "READY=1", index(m, "RELOADING=1") + 1) > 0 and
                             index(m, "RELOADING=1") >= 0, "RELOADING then READY")
        run = self.stop_daemon(p)
        m = self.notify.drain()

        self.assertEqual(run.returncode, 0, run)
        ready = index(m, "READY=1")
        self.assertEqual(ready, 0, m)     # READY=1 comes first, after the configuration loaded
        self.assertGreater(index(m, "STATUS="), ready)
        self.assertGreater(index(m, "WATCHDOG=1"), ready)
        reloading = index(m, "RELOADING=1")
        self.assertGreater(reloading, ready)
        self.assertGreater(index(m, "READY=1", reloading + 1), reloading)
        self.assertEqual(m[-1], "STOPPING=1", m)
        status = [x for x in m if x.startswith("STATUS=")][0]
        self.assertRegex(status, r"STATUS=1 sessions listed, 1 reclaimed, 0 failed; next poll at \d\d:\d\d:\d\d")

    def test_no_watchdog_pings_unless_asked(self):
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="200ms")
        p = self.start()
        self.notify.wait_for(lambda m: len([x for x in m if x.startswith("STATUS=")]) >= 3, "three cycles")
        self.stop_daemon(p)
        self.assertEqual([x for x in self.notify.drain() if x.startswith("WATCHDOG")], [])

    def test_watchdog_pings_while_healthy(self):
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="10s")
        p = self.start(watchdog_usec=200000)
        # Pings every 100 ms, also while no cycle runs.
        self.notify.wait_for(lambda m: m.count("WATCHDOG=1") >= 5, "five watchdog pings")
        self.stop_daemon(p)

    def test_list_failure_shows_in_status(self):
        self.gw.add_fault("listsessionofuin", "http_status", status=500, count=100)
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="10s")
        p = self.start()
        self.notify.wait_for(lambda m: index(m, "STATUS=") >= 0, "a status")
        self.stop_daemon(p)
        self.assertTrue([x for x in self.notify.drain() if x.startswith("STATUS=Last poll failed")])


class Reload(DaemonTest):
    def test_good_file_takes_effect_on_the_next_cycle(self):
        failed = self.gw.add_session("u1", STREAM_FAILED)
        unstarted = self.gw.add_session("u2", IN_PROGRESS, started=False)
        self.write_config([("never-started", "not_started", "1d")], poll_interval="200ms")
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) >= 2, what="two cycles")
        self.assertEqual(self.gw.calls_to("closesession"), [])

        self.write_config([("failed-streams", "failed", "0s")], poll_interval="200ms")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: self.gw.closed_ids() == [failed], what="the reloaded policy to close the failed stream")
        time.sleep(0.5)
        run = self.stop_daemon(p)

        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(self.gw.status_of(unstarted), IN_PROGRESS)
        self.assertTrue(any("reloaded configuration is now in effect" in l["msg"] for l in run.logs), run)

    def test_broken_file_keeps_the_old_policy(self):
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="200ms")
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) >= 1, what="a cycle")

        with open(self.config_file, "a") as f:
            f.write("  - name: broken\n    kind: [failed\n")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: any("Reload failed" in l.get("msg", "") for l in self.daemon_log(p)),
                 what="the reload to be refused")
        # The old policy still runs.
        late = self.gw.add_session("u-late", STREAM_FAILED)
        wait_for(lambda: self.gw.closed_ids() == [late], what="the old policy to close a new failed stream")
        self.assertIsNone(p.poll())
        run = self.stop_daemon(p)

        self.assertEqual(run.returncode, 0, run)
        errors = [l["msg"] for l in run.logs if l["level"] == "error"]
        self.assertTrue(any(e.startswith("%s:" % self.config_file) and "YAML syntax error" in e for e in errors),
                        errors)
        self.assertRegex("\n".join(errors), r"%s:\d+:\d+: " % self.config_file)

    def test_reload_with_invalid_values_lists_every_error(self):
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="200ms")
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) >= 1, what="a cycle")
        self.write_config([("failed-streams", "failed", "soon"), ("x", "forever", "1m")], poll_interval="200ms")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: any("Reload failed" in l.get("msg", "") for l in self.daemon_log(p)),
                 what="the reload to be refused")
        run = self.stop_daemon(p)
        errors = [l["msg"] for l in run.logs if l["level"] == "error"]
        self.assertTrue(any("invalid duration 'soon'" in e for e in errors), errors)
        self.assertTrue(any("got 'forever'" in e for e in errors), errors)

    def test_state_file_change_needs_a_restart(self):
        self.gw.add_session("u1", IN_PROGRESS)
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="200ms")
        p = self.start_daemon()
        wait_for(lambda: len(self.gw.calls_to("listsessionofuin")) >= 1, what="a cycle")
        old = self.state_file
        self.state_file = os.path.join(self.dir, "other.json")
        self.write_config([("failed-streams", "failed", "0s")], poll_interval="200ms")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: any("needs a restart" in l.get("msg", "") for l in self.daemon_log(p)),
                 what="the reload to be refused")
        self.stop_daemon(p)
        self.assertTrue(os.path.exists(old))
        self.assertFalse(os.path.exists(self.state_file))
