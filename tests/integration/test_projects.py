"""gateway.project_ids: sessions are listed with listsessionofprojectid, one
call per project, instead of listsessionofuin."""

from harness import DaemonTest
from gateway_sim import STREAM_FAILED


class Projects(DaemonTest):
    def setUp(self):
        super().setUp()
        self.p1 = [self.gw.add_session("u%d" % i, STREAM_FAILED, project_id="p1") for i in range(3)]
        self.p2 = [self.gw.add_session("v%d" % i, STREAM_FAILED, project_id="p2") for i in range(2)]
        self.p3 = [self.gw.add_session("w%d" % i, STREAM_FAILED, project_id="p3") for i in range(2)]

    def config(self, projects):
        self.write_config([("failed-streams", "failed", "0s")],
                          gateway_extra="  project_ids: %s\n" % projects)

    def test_only_the_listed_projects(self):
        self.config('["p1", "p2"]')
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertCountEqual(self.gw.closed_ids(), self.p1 + self.p2)
        self.assertEqual(self.gw.calls_to("listsessionofuin"), [])
        self.assertEqual(len(self.gw.calls_to("listsessionofprojectid")), 2)
        self.assertEqual(run.summaries()[-1]["listed"], "5")
        self.assert_gateway_clean()

    def test_one_project_failing_means_no_decision(self):
        self.config('["p1", "p2"]')
        self.gw.add_fault("listsessionofprojectid", "http_status", status=500)
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 1, run)
        self.assertEqual(self.gw.calls_to("closesession"), [])
        failed = [l for l in run.logs if l.get("message_id") == "f8e2aad76f6749b7a1433345838414f1"]
        self.assertRegex(failed[0]["error"], r"^project p[12]: HTTP status 500")
        run = self.run_daemon("--once")
        self.assertEqual(run.returncode, 0, run)
        self.assertCountEqual(self.gw.closed_ids(), self.p1 + self.p2)

    def test_plan_per_project(self):
        self.config('["p3"]')
        run = self.run_daemon("--plan")
        self.assertEqual(run.returncode, 0, run)
        self.assertIn("2 sessions: 2 to reclaim", run.stdout)

    def test_duplicate_project_is_a_config_error(self):
        self.config('["p1", "p1"]')
        run = self.run_daemon("--check-config")
        self.assertEqual(run.returncode, 78)
        self.assertIn("'p1' is listed twice", run.stderr)
