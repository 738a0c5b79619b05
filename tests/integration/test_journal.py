"""Journal entries and their fields, read back with `journalctl -o json` from
a real systemd-journald. The test starts one when none is running (as root)."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import uuid

from harness import BINARY, TOKEN, DaemonTest, wait_for
from gateway_sim import STREAM_FAILED

JOURNAL_SOCKET = "/run/systemd/journal/socket"
JOURNALD = "/lib/systemd/systemd-journald"
CATALOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "systemd", "ivh-reclaimd.catalog")
_started = None


def journald_listening():
    if not os.path.exists(JOURNAL_SOCKET):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect(JOURNAL_SOCKET)
        return True
    except OSError:
        return False
    finally:
        s.close()


def setUpModule():
    global _started
    if journald_listening():
        return
    if os.geteuid() != 0:
        raise unittest.SkipTest("no systemd-journald is running and starting one needs root; "
                                "run the suite as root to test the journal")
    if not os.access(JOURNALD, os.X_OK):
        raise unittest.SkipTest("%s not found: install the systemd package" % JOURNALD)
    _started = subprocess.Popen([JOURNALD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(journald_listening, timeout=15, what="systemd-journald to listen")


def tearDownModule():
    if _started is not None:
        _started.terminate()
        _started.wait(timeout=10)


def journal(*matches):
    p = subprocess.run(["journalctl", "--no-pager", "-o", "json", *matches], capture_output=True, text=True)
    return [json.loads(l) for l in p.stdout.splitlines() if l.strip()]


class Journal(DaemonTest):
    def test_reclaim_entries_and_fields(self):
        user = "journal-test-" + uuid.uuid4().hex[:12]
        sid = self.gw.add_session(user, STREAM_FAILED, session_id="sess-" + uuid.uuid4().hex[:12])
        self.write_config([("failed-streams", "failed", "0s")])
        run = self.run_daemon("--once", "--log-target", "journal")   # the last --log-target wins
        self.assertEqual(run.returncode, 0, run)
        self.assertEqual(run.stderr, "", "with --log-target journal nothing goes to stderr")

        wait_for(lambda: journal("IVH_USER_ID=" + user), what="the reclaim entry in the journal")
        entries = journal("IVH_USER_ID=" + user)
        self.assertEqual(len(entries), 1, entries)
        e = entries[0]
        self.assertEqual(e["SYSLOG_IDENTIFIER"], "ivh-reclaimd")
        self.assertEqual(e["MESSAGE_ID"], "99f9654f605e424185666fe382c90fb6")
        self.assertEqual(e["IVH_SESSION_ID"], sid)
        self.assertEqual(e["IVH_POLICY"], "failed-streams")
        self.assertEqual(e["IVH_POLICY_KIND"], "failed")
        self.assertEqual(e["IVH_AGE_SEC"], "0")
        self.assertEqual(e["IVH_SESSION_STATUS"], "4")
        self.assertEqual(e["IVH_OUTCOME"], "closed")
        self.assertEqual(e["PRIORITY"], "5")
        self.assertIn(sid, e["MESSAGE"])

        # The cycle summary of the same process, and no secret anywhere.
        # The command line names this test's own directory: PIDs are reused,
        # and the journal keeps the entries of earlier runs.
        everything = journal("_PID=" + e["_PID"], "_CMDLINE=" + e["_CMDLINE"])
        summaries = [x for x in everything if x.get("MESSAGE_ID") == "e28e9acd311d441a9e1e0a1a36189eb0"]
        self.assertEqual(len(summaries), 1, everything)
        self.assertEqual(summaries[0]["IVH_CLOSED"], "1")
        self.assertEqual(summaries[0]["IVH_LISTED"], "1")
        self.assertNotIn(TOKEN, json.dumps(everything))

    def test_auto_target_follows_journal_stream(self):
        # Under systemd, stderr is a journal stream and $JOURNAL_STREAM names
        # it (device:inode); "auto" then logs natively to the journal.
        user = "auto-" + uuid.uuid4().hex[:12]
        self.gw.add_session(user, STREAM_FAILED)
        self.write_config([("failed-streams", "failed", "0s")])
        err_path = os.path.join(self.dir, "stderr")
        with open(err_path, "w") as err:
            st = os.fstat(err.fileno())
            env = self.env()
            env["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino)
            p = subprocess.run([BINARY, "--config", self.config_file, "--once"],
                               env=env, stdout=subprocess.DEVNULL, stderr=err, timeout=60)
        self.assertEqual(p.returncode, 0)
        with open(err_path) as f:
            self.assertEqual(f.read(), "", "auto chose the journal: nothing on stderr")
        wait_for(lambda: journal("IVH_USER_ID=" + user), what="the entry in the journal")

    def test_failed_list_entry(self):
        self.gw.add_fault("listsessionofuin", "api_error", code=-101001, message="quota " + uuid.uuid4().hex)
        msg = self.gw.faults[0]["message"]
        self.write_config([("failed-streams", "failed", "0s")])
        run = self.run_daemon("--once", "--log-target", "journal")
        self.assertEqual(run.returncode, 1)
        wait_for(lambda: [x for x in journal("IVH_API_CODE=-101001") if msg in x.get("IVH_ERROR", "")],
                 what="the cycle-failed entry")
        e = [x for x in journal("IVH_API_CODE=-101001") if msg in x.get("IVH_ERROR", "")][0]
        self.assertEqual(e["MESSAGE_ID"], "f8e2aad76f6749b7a1433345838414f1")
        self.assertEqual(e["PRIORITY"], "3")

    def test_user_id_with_newline_is_never_acted_on_nor_forges_a_field(self):
        tag = uuid.uuid4().hex[:8]
        user = "evil\nMESSAGE_ID=00000000000000000000000000000000-" + tag
        sid = self.gw.add_session(user, STREAM_FAILED, session_id="evil-" + tag + "\nIVH_OUTCOME=closed")
        self.write_config([("failed-streams", "failed", "0s")])
        run = self.run_daemon("--once", "--log-target", "journal")
        self.assertEqual(run.returncode, 0, run)
        # A control character makes the entry hostile: never closed, one warning with the bytes escaped.
        wait_for(lambda: [x for x in journal("SYSLOG_IDENTIFIER=ivh-reclaimd", "PRIORITY=4")
                          if x.get("IVH_SESSION_ID") == "evil-" + tag + "\\x0aIVH_OUTCOME=closed"],
                 what="the warning about the hostile entry")
        self.assertEqual(self.gw.closed_ids(), [])
        self.assertNotIn(sid, self.gw.closed_ids())
        forged = journal("MESSAGE_ID=00000000000000000000000000000000")
        self.assertEqual(forged, [])


class Catalog(unittest.TestCase):
    def test_catalog_compiles_and_lists_every_message_id(self):
        root = tempfile.mkdtemp(prefix="ivh-catalog-")
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        os.makedirs(os.path.join(root, "usr/lib/systemd/catalog"))
        shutil.copy(CATALOG, os.path.join(root, "usr/lib/systemd/catalog"))
        p = subprocess.run(["journalctl", "--root", root, "--update-catalog"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr, "")
        p = subprocess.run(["journalctl", "--root", root, "--list-catalog"], capture_output=True, text=True)
        ids = {l.split()[0] for l in p.stdout.splitlines()}
        self.assertEqual(ids, {"99f9654f605e424185666fe382c90fb6", "e28e9acd311d441a9e1e0a1a36189eb0",
                               "f8e2aad76f6749b7a1433345838414f1", "7790a43c50c9428f9d94329cc7e5e131",
                               "fdd69b80db994344b2f08dde98cb05ea", "d1f0b64d5da24960a3fff63a226ec244",
                               "744e34992be84570b0e60a79de095343"})
        # Every MESSAGE_ID the daemon defines has an entry.
        with open(os.path.join(os.path.dirname(CATALOG), "..", "daemon", "log.h")) as f:
            defined = {l.split('"')[1] for l in f if l.startswith("#define MESSAGE_ID_")}
        self.assertEqual(defined, ids)
