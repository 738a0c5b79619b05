#!/usr/bin/env python3
"""A model of issue 24's pace question, not a measurement: how few calls can
a pace that learns from refusals have refused at a 40-calls/s gateway, when
it must also close 100 sessions within 0.5 s on a gateway without a limit?

The two gateways (bench/throttle.py's simulator: a token bucket of 40 calls/s
with one second of burst, 50 ms per call; and the same without a limit) answer
every call alike until the bucket runs dry, so any pace that learns from
refusals sends the same calls to both until its first refusal comes back.
For every schedule of calls per round trip (a start of 2..19 calls, growing
x1.00..x2.00 per round trip, at most max_parallel 32) that closes the 100
sessions in time, this counts the calls the limited gateway refuses before
the first refusal can be acted on, with an ideal pace after it (no refusal
more). The best geometric schedule (a gentle start, then a fixed growth per
round trip) has 12 calls refused, 5.6 % of 213, against the target of 5 %.
--search tries random non-decreasing schedules instead: the best found (9
calls, 4.2 %) holds about 11 calls per round trip for five round trips and
then grows steeply, a shape that fits this bucket's size rather than a rule.
Both rows together leave a margin of one or two calls.

Usage: bench/pace_model.py [--search]
"""

import random
import sys

RTT = 0.05    # per call, both gateways
START = 0.06  # process start and the list call
N_FAST = 100  # row 1: sessions, no limit, within 0.5 s
LIMIT, BURST = 40.0, 40.0  # row 3: 200 sessions
MAX_PARALLEL = 32


def fast_row_time(schedule):
    sent, k = 0, 0
    while sent < N_FAST:
        sent += schedule(k)
        k += 1
    return START + k * RTT


def limited_row_refused(schedule):
    """Calls refused until the first refusal's reply is back."""
    tokens, refused, sent, k = BURST, 0, 0, 0
    while sent < 200:
        w = max(1, int(round(schedule(k))))
        first = None
        for i in range(w):
            tokens = min(BURST, tokens + RTT / w * LIMIT)
            if tokens >= 1:
                tokens -= 1
                sent += 1
            else:
                refused += 1
                first = i if first is None else first
        if first is not None:
            # the next round's calls sent before that reply came back
            w2 = max(1, int(round(schedule(k + 1))))
            return refused + max(0, first - int(LIMIT * RTT * first / w2))
        k += 1
    return 0


def search(tries=300000):
    rng, best = random.Random(1), None
    for _ in range(tries):
        w = sorted(rng.randint(1, MAX_PARALLEL) for _ in range(9))
        schedule = (lambda k, w=w: w[k] if k < len(w) else MAX_PARALLEL)
        if fast_row_time(schedule) > 0.5:
            continue
        refused = limited_row_refused(schedule)
        if best is None or refused < best[0]:
            best = (refused, w)
    print("best of %d random schedules: %d calls refused, calls per round trip %s" % (tries, best[0], best[1]))


def main():
    if "--search" in sys.argv[1:]:
        return search()
    rows = []
    for start in range(2, 20):
        for growth in (1.0, 1.05, 1.1, 1.15, 1.2, 1.3, 1.4, 1.5, 1.75, 2.0):
            schedule = (lambda k, a=start, g=growth: min(MAX_PARALLEL, a * g ** k))
            t = fast_row_time(schedule)
            if t <= 0.5:
                rows.append((limited_row_refused(schedule), t, start, growth))
    rows.sort()
    print("| start (calls per round trip) | growth per round trip | row 1 time | row 3 calls refused before the pace can know |")
    print("|---|---|---|---|")
    for refused, t, start, growth in rows[:5]:
        print("| %d | x%.2f | %.2f s | %d (%.1f %% of %d) |" % (start, growth, t, refused,
                                                            100.0 * refused / (200 + refused + 1),
                                                            200 + refused + 1))


if __name__ == "__main__":
    main()
