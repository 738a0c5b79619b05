#include "throttle.h"

#include <assert.h>

#define OVERLOAD_PAUSE_MS   250   /* after a 503, doubling while they keep coming */
#define PAUSE_MAX_MS        16000 /* ... up to this */
#define SLOT_MS             100
#define CUT                 0.9  /* a cut keeps this share of what was accepted */
#define FIRST_CUT           0.5  /* ... of what the gateway accepted while it had a burst saved up */
#define ROUND_REPLIES       8    /* a round trip is judged on at least this many replies */
#define NOISY_ROUND_REPLIES 32   /* ... once some refusals are known to be noise */
#define JUDGE_REPLIES       64   /* a cut is judged on the replies after it */
#define JUDGE_NOISE_MIN     3    /* refusals among them that can say noise */
#define ROUND_MAX_MS        1000 /* a round trip whose replies do not all come back ends after this */
#define DEFAULT_RTT_MS      100  /* until a reply has been timed */
#define MIN_SPAN_MS         50   /* a rate is never measured over less (a fast loopback) */
#define NOISE_MAX           0.4  /* a larger share of refusals is never noise */
#define NOISE_DRIFT         0.1  /* noise already known does not grow by more at once */
#define LIMIT_MAX           0.5  /* a round trip with more refused always cuts */

/* The lower of max_rate and the pace, 0 when neither limits. */
static void set_rate(struct throttle *t) {
        double r = t->max_rate;

        if (t->pace > 0 && (r <= 0 || t->pace < r))
                r = t->pace;
        t->rate = r;
}

static unsigned round_quota(const struct throttle *t) {
        unsigned q = t->phase == THROTTLE_CHECKING ? THROTTLE_CHECK_CALLS : (unsigned) t->start_size;

        if (q > t->max_window)
                q = t->max_window;
        return q > 0 ? q : 1;
}

/* A round trip begins; its size is fixed now (the replies that come back
 * during it make the next one larger). */
static void new_round(struct throttle *t, int64_t now_ms) {
        t->round = (struct throttle_round){ .first = t->next_seq,
                                            .started_ms = now_ms,
                                            .quota = round_quota(t) };
}

/* No burst after a refusal or a cut: the pace starts from one token. */
static void drain(struct throttle *t, int64_t now_ms) {
        if (t->tokens > 1)
                t->tokens = 1;
        t->refilled_ms = now_ms;
}

/* The pace starts over: at max_rate when there is one, else gently. */
static void restart(struct throttle *t, int64_t now_ms) {
        t->phase = t->max_rate > 0 ? THROTTLE_PACING : THROTTLE_STARTING;
        t->start_size = t->max_window < THROTTLE_START_WINDOW ? t->max_window : THROTTLE_START_WINDOW;
        t->pace = 0;
        t->noise = 0;
        t->judging = false;
        t->probing = false;
        t->recent = 0;
        t->n_recent = 0;
        t->started_ms = now_ms;
        t->cut_seq = t->next_seq;
        set_rate(t);
        t->tokens = t->rate > 1 ? t->rate : 1; /* one second's worth */
        t->refilled_ms = now_ms;
        new_round(t, now_ms);
}

void throttle_init(struct throttle *t, unsigned max_parallel, double max_rate, int64_t now_ms) {
        assert(t && max_parallel > 0);
        *t = (struct throttle){
                .max_window = max_parallel,
                .window = max_parallel,
                .max_rate = max_rate > 0 ? max_rate : 0,
                .next_seq = 1,
        };
        restart(t, now_ms);
}

void throttle_configure(struct throttle *t, unsigned max_parallel, double max_rate, int64_t now_ms) {
        assert(t && max_parallel > 0);
        t->max_window = max_parallel;
        if (t->window > max_parallel)
                t->window = max_parallel;
        if (t->start_size > max_parallel)
                t->start_size = max_parallel;
        if (t->max_rate != (max_rate > 0 ? max_rate : 0)) {
                t->max_rate = max_rate > 0 ? max_rate : 0;
                restart(t, now_ms);
        }
}

/* A pause never cuts a longer one short. */
static void extend(int64_t *until_ms, int64_t to_ms) {
        if (to_ms > *until_ms)
                *until_ms = to_ms;
}

/* A call about to go after 10 s without one: the pace starts over. */
static void restart_if_idle(struct throttle *t, int64_t now_ms) {
        if (t->last_call_ms > 0 && now_ms - t->last_call_ms >= THROTTLE_IDLE_MS)
                restart(t, now_ms);
}

static void refill(struct throttle *t, int64_t now_ms) {
        double burst = t->rate > 1 ? t->rate : 1; /* one second's worth */

        if (t->refilled_ms < t->paused_until_ms)
                t->refilled_ms = t->paused_until_ms < now_ms ? t->paused_until_ms : now_ms;
        if (now_ms > t->refilled_ms) {
                if (t->rate > 0)
                        t->tokens += (double) (now_ms - t->refilled_ms) * t->rate / 1000.0;
                if (t->tokens > burst)
                        t->tokens = burst;
                t->refilled_ms = now_ms;
        }
}

unsigned throttle_accepted_last_second(const struct throttle *t, int64_t now_ms) {
        int64_t slot = now_ms / SLOT_MS;
        unsigned n = 0;

        assert(t);
        for (unsigned i = 0; i < THROTTLE_SLOTS; i++)
                if (t->slot_of[i] > slot - THROTTLE_SLOTS && t->slot_of[i] <= slot)
                        n += t->accepted[i];
        return n;
}

static int64_t rtt_ms(const struct throttle *t) {
        return t->srtt_ms > 0 ? t->srtt_ms : DEFAULT_RTT_MS;
}

static void note_rtt(struct throttle *t, int64_t rtt) {
        if (rtt < 1)
                rtt = 1;
        t->srtt_ms = t->srtt_ms > 0 ? t->srtt_ms + (rtt - t->srtt_ms) / 8 : rtt;
        if (t->srtt_ms < 1)
                t->srtt_ms = 1;
}

/* Calls per second in the round trip so far: over the time the calls that
 * replied took to send, and at least one round trip (a round trip's calls
 * that went at once came back at once) and 50 ms. */
static double per_second(const struct throttle *t, unsigned calls) {
        int64_t ms = t->round.last_sent_ms - t->round.first_sent_ms;

        if (ms < rtt_ms(t))
                ms = rtt_ms(t);
        if (ms < MIN_SPAN_MS)
                ms = MIN_SPAN_MS;
        return (double) calls * 1000.0 / (double) ms;
}

/* What the gateway accepted in the round trip, per second; none accepted:
 * less than one call per round trip (half of it, then). */
static double accepted_rate(const struct throttle *t) {
        return t->round.accepted > 0 ? per_second(t, t->round.accepted) : FIRST_CUT * per_second(t, 1);
}

/* A reply to a call of this round trip, sent rtt ms ago. */
static void count_reply(struct throttle *t, int64_t rtt, int64_t now_ms) {
        struct throttle_round *r = &t->round;
        int64_t sent = now_ms - (rtt > 0 ? rtt : 0);

        r->replied++;
        if (r->first_sent_ms == 0 || sent < r->first_sent_ms)
                r->first_sent_ms = sent;
        if (sent > r->last_sent_ms)
                r->last_sent_ms = sent;
}

/* The share of refusals in the last 32 replies (not the ones sent before
 * the last cut). */
static double recent_share(const struct throttle *t) {
        uint32_t mask = t->n_recent >= 32 ? UINT32_MAX : (UINT32_C(1) << t->n_recent) - 1;

        return t->n_recent > 0 ? (double) __builtin_popcount(t->recent & mask) / t->n_recent : 0;
}

static void remember(struct throttle *t, bool refused) {
        t->recent = (t->recent << 1) | (refused ? 1 : 0);
        if (t->n_recent < 32)
                t->n_recent++;
}

/* Calls per second the gateway accepted in the last second (or since the
 * pace started, if that is less). */
static double last_second_rate(const struct throttle *t, int64_t now_ms) {
        int64_t ms = now_ms - t->started_ms;

        if (ms > 1000 || ms < 1)
                ms = 1000;
        return (double) throttle_accepted_last_second(t, now_ms) * 1000.0 / (double) ms;
}

static double refused_share(const struct throttle_round *r) {
        unsigned n = r->accepted + r->refused;

        return n > 0 ? (double) r->refused / n : 0;
}

/* The share of refusals a round trip must exceed to cut the pace. */
static double noise_limit(const struct throttle *t) {
        double limit = 2 * t->noise + 0.05;

        return t->noise <= 0 ? 0 : (limit < LIMIT_MAX ? limit : LIMIT_MAX);
}

/* The pace becomes `pace` (at least 1 call/s). The 32 replies after it show
 * whether it helped. */
static void cut_to(struct throttle *t, double pace, int64_t now_ms) {
        if (t->rate > 0 && pace > CUT * t->rate)
                pace = CUT * t->rate;
        if (pace < THROTTLE_MIN_RATE)
                pace = THROTTLE_MIN_RATE;
        /* Undone, the pace goes back to where it was; from no pace at all,
         * to twice the new one: a cut that was not deep enough looks like
         * noise too, and no pace would send a whole window at once. */
        t->undo_pace = t->pace > 0 || 2 * pace > THROTTLE_FREE_RATE ? t->pace : 2 * pace;
        t->cut_share = recent_share(t);
        t->judging = true;
        t->probing = false;
        t->pace = pace;
        t->cuts++;
        t->last_undone = false;
        t->phase = THROTTLE_PACING;
        t->cut_seq = t->next_seq;
        set_rate(t);
        t->tokens = 0; /* the next call waits one call's time at the new pace */
        t->refilled_ms = now_ms;
}

/* Starting: a round trip without refusals makes the next one larger (each
 * accepted reply added half a call); one at max_window ends the start. A
 * round trip with refusals is followed by a small check. */
static void end_start_round(struct throttle *t, int64_t now_ms) {
        const struct throttle_round *r = &t->round;

        if (r->refused > 0) {
                t->refused_round_rate = per_second(t, r->accepted);
                t->phase = THROTTLE_CHECKING;
                t->cut_seq = t->next_seq;
        } else if (r->sent >= t->max_window && t->start_size >= t->max_window)
                t->phase = THROTTLE_PACING; /* no pace: the window alone */
        new_round(t, now_ms);
}

/* Checking: refused again, the gateway's bucket is empty and what it
 * accepted is its rate. Not refused, the check's rate passes, and the
 * refused round trip's rate (or the last second's) was too much. */
static void end_check_round(struct throttle *t, int64_t now_ms) {
        const struct throttle_round *r = &t->round;
        double pace;

        if (r->refused > 0 || r->accepted == 0)
                pace = CUT * accepted_rate(t);
        else {
                double got = t->refused_round_rate;
                double last = last_second_rate(t, now_ms);

                pace = FIRST_CUT * (got < last ? got : last);
                if (pace < per_second(t, r->accepted))
                        pace = per_second(t, r->accepted);
        }
        cut_to(t, pace, now_ms);
        /* A guess from one small round trip: not judged (the next
         * refusal cuts it at once, measured over longer). */
        t->judging = false;
        new_round(t, now_ms);
}

/* Pacing: a round trip after a cut whose share of refusals stayed about
 * the same says the cut did not help: it is undone, and that share is
 * noise. Otherwise, a share above the noise cuts the pace to what the
 * gateway accepted. */
static void end_pacing_round(struct throttle *t, int64_t now_ms) {
        const struct throttle_round *r = &t->round;
        double share = refused_share(r);

        if (r->accepted + r->refused == 0) {
                new_round(t, now_ms);
                return;
        }
        if (t->judging) {
                t->judging = false;
                /* A cut to below a limit leaves next to no refusals; noise
                 * leaves about as many. At least 3 refusals, and at least
                 * a quarter of the share before, say noise; but one
                 * refusal in 32 before the cut is too few to compare with
                 * (a cut that was not quite deep enough leaves more). */
                if (r->refused >= JUDGE_NOISE_MIN && t->cut_share >= 2.0 / 32 && share >= t->cut_share / 4 &&
                    share < NOISE_MAX && (t->noise <= 0 || share <= t->noise + NOISE_DRIFT)) {
                        if (share > t->noise)
                                t->noise = share;
                        /* At most twice the cut, probing up from there: a
                         * cut not quite below a limit looks like noise
                         * too, and must not bring back the old pace. */
                        t->pace =
                                t->undo_pace > 0 && t->undo_pace < 2 * t->pace ? t->undo_pace : 2 * t->pace;
                        if (t->pace > THROTTLE_FREE_RATE)
                                t->pace = 0;
                        t->probing = t->pace > 0;
                        t->undone++;
                        t->last_undone = true;
                        set_rate(t);
                        new_round(t, now_ms);
                        return;
                }
                /* The cut helped: what was refused was the pace. Some
                 * refusals left may still be noise the cut only seemed
                 * to lessen: the pace probes upwards again. Refusals as
                 * frequent as before the cut say it was not deep enough. */
                t->noise = 0;
                t->probing = r->refused > 0;
                if (share < t->cut_share) {
                        new_round(t, now_ms);
                        return;
                }
                t->probing = false;
        }
        if (r->refused > 0 && share > noise_limit(t)) {
                double got = accepted_rate(t);
                double last = last_second_rate(t, now_ms);

                if (r->replied < ROUND_REPLIES) {
                        /* The first refusals, too few replies to measure:
                         * 90 % of the pace or of the last second's rate,
                         * half in the first second (it holds the burst
                         * the gateway had saved up). */
                        double keep = now_ms - t->started_ms < 1000 ? FIRST_CUT : CUT;

                        cut_to(t, keep * (t->rate > 0 && t->rate < last ? t->rate : last), now_ms);
                } else {
                        /* The round trip's rate follows a drop at once;
                         * calls that went in one burst make it too low,
                         * though: then never below half the last
                         * second's. */
                        if (r->last_sent_ms - r->first_sent_ms < 2 * rtt_ms(t) && got < FIRST_CUT * last)
                                got = FIRST_CUT * last;
                        cut_to(t, CUT * got, now_ms);
                }
        }
        new_round(t, now_ms);
}

static void end_round(struct throttle *t, int64_t now_ms) {
        switch (t->phase) {
        case THROTTLE_STARTING:
                end_start_round(t, now_ms);
                break;
        case THROTTLE_CHECKING:
                end_check_round(t, now_ms);
                break;
        case THROTTLE_PACING:
                end_pacing_round(t, now_ms);
                break;
        }
}

/* A reply to a call of this round trip came in: is the round trip over? */
static void after_reply(struct throttle *t, int64_t now_ms) {
        const struct throttle_round *r = &t->round;
        int64_t ms = now_ms - r->started_ms;
        /* Noise, and a cut, are judged on more replies than a limit. */
        unsigned need = t->judging                    ? JUDGE_REPLIES
                        : t->noise > 0 && !t->probing ? NOISY_ROUND_REPLIES
                                                      : ROUND_REPLIES;

        if (t->phase != THROTTLE_PACING) {
                if (r->replied >= r->sent)
                        end_round(t, now_ms);
        } else if (r->refused > 0 && !t->judging && t->noise <= 0)
                end_round(t,
                          now_ms); /* no noise known: the sooner the cut, the fewer calls at the old pace */
        else if (t->judging && r->replied >= 2 * ROUND_REPLIES && refused_share(r) >= 0.75)
                end_round(t, now_ms); /* the cut was not deep enough: no noise is that loud */
        else if (ms >= rtt_ms(t) &&
                 (r->replied >= need || (!t->judging && r->replied >= r->sent && ms >= 1000) ||
                  (t->judging && r->replied >= 2 * ROUND_REPLIES && ms >= 2000)))
                end_round(t, now_ms);
}

static bool in_round(const struct throttle *t, uint64_t seq) {
        return seq >= t->round.first && seq < t->next_seq;
}

uint64_t throttle_take(struct throttle *t, int64_t now_ms) {
        assert(t);
        restart_if_idle(t, now_ms);
        refill(t, now_ms);
        if (t->rate > 0)
                t->tokens -= 1.0;
        t->last_call_ms = now_ms > 0 ? now_ms : 1;
        t->round.sent++;
        return t->next_seq++;
}

void throttle_ok(struct throttle *t, uint64_t seq, int64_t rtt, int64_t now_ms) {
        int64_t slot = now_ms / SLOT_MS;
        unsigned i = (unsigned) (slot % THROTTLE_SLOTS);

        assert(t);
        if (t->slot_of[i] != slot) {
                t->slot_of[i] = slot;
                t->accepted[i] = 0;
        }
        t->accepted[i]++;
        t->overloaded = 0;
        note_rtt(t, rtt);
        if (t->window < t->max_window && ++t->ok_in_window >= t->window) {
                t->window++;
                t->ok_in_window = 0;
        }
        if (seq < t->cut_seq)
                return; /* sent before the last cut: teaches nothing */
        remember(t, false);
        if (t->phase == THROTTLE_STARTING && t->start_size < t->max_window) {
                t->start_size += 0.5;
                if (t->start_size > t->max_window)
                        t->start_size = t->max_window;
        } else if (t->phase == THROTTLE_PACING && !t->judging && t->pace > 0) {
                /* One call per second more for each second's worth of
                 * accepted calls (an additive increase, as TCP's
                 * congestion avoidance does per round trip); after a cut
                 * undone, double per round trip (each accepted reply adds
                 * one per round trip) until refusals above the noise stop
                 * it. */
                if (t->probing)
                        t->pace += 1000.0 / (double) rtt_ms(t);
                else
                        t->pace += 1.0 / t->pace;
                if (t->pace > THROTTLE_FREE_RATE)
                        t->pace = 0;
                set_rate(t);
        }
        if (in_round(t, seq)) {
                count_reply(t, rtt, now_ms);
                t->round.accepted++;
                after_reply(t, now_ms);
        }
}

void throttle_other(struct throttle *t, uint64_t seq, int64_t now_ms) {
        assert(t);
        if (seq >= t->cut_seq && in_round(t, seq)) {
                t->round.replied++;
                after_reply(t, now_ms);
        }
}

uint64_t throttle_refused(struct throttle *t, uint64_t seq, bool learn, uint64_t retry_after_ms, int64_t rtt,
                          int64_t now_ms) {
        assert(t);
        refill(t, now_ms);
        note_rtt(t, rtt);
        if (!learn) {
                /* Overloaded: fewer calls in flight and a pause, no pace. */
                uint64_t pause = OVERLOAD_PAUSE_MS;

                /* Once per round trip: 503s to calls sent before the last
                 * one was acted on are the same overload. */
                if (seq >= t->overload_seq) {
                        t->window = t->window > 1 ? t->window / 2 : 1;
                        t->ok_in_window = 0;
                        if (t->overloaded < 16)
                                t->overloaded++;
                        t->overload_seq = t->next_seq;
                }
                for (unsigned i = 1; i < t->overloaded && pause < PAUSE_MAX_MS; i++)
                        pause *= 2;
                extend(&t->paused_until_ms,
                       now_ms + (int64_t) (pause < PAUSE_MAX_MS ? pause : PAUSE_MAX_MS));
                throttle_other(t, seq, now_ms);
        } else {
                drain(t, now_ms);
                if (seq >= t->cut_seq)
                        remember(t, true);
                if (seq >= t->cut_seq && in_round(t, seq)) {
                        count_reply(t, rtt, now_ms);
                        t->round.refused++;
                        after_reply(t, now_ms);
                }
        }
        if (retry_after_ms > 0)
                throttle_hold(t, retry_after_ms, now_ms); /* the gateway's pause */
        return throttle_paused_ms(t, now_ms);
}

void throttle_hold(struct throttle *t, uint64_t ms, int64_t now_ms) {
        assert(t);
        extend(&t->paused_until_ms, now_ms + (int64_t) ms);
        extend(&t->held_until_ms, now_ms + (int64_t) ms);
}

void throttle_new_cycle(struct throttle *t, int64_t now_ms) {
        assert(t);
        if (t->paused_until_ms > t->held_until_ms)
                t->paused_until_ms = t->held_until_ms;
        /* A round trip of the start cut short is begun again; one of the
         * pace (and the judgement of a cut) goes on over the cycles, or a
         * short poll_interval would never let it end. */
        if (t->phase != THROTTLE_PACING)
                new_round(t, now_ms);
}

uint64_t throttle_held_ms(const struct throttle *t, int64_t now_ms) {
        assert(t);
        return t->held_until_ms > now_ms ? (uint64_t) (t->held_until_ms - now_ms) : 0;
}

uint64_t throttle_paused_ms(const struct throttle *t, int64_t now_ms) {
        assert(t);
        return t->paused_until_ms > now_ms ? (uint64_t) (t->paused_until_ms - now_ms) : 0;
}

/* How long a round trip may wait for its replies before it ends anyway. */
static int64_t round_limit_ms(const struct throttle *t) {
        return 2 * rtt_ms(t) > ROUND_MAX_MS ? 2 * rtt_ms(t) : ROUND_MAX_MS;
}

bool throttle_awaits_replies(const struct throttle *t, int64_t now_ms) {
        assert(t);
        return t->phase != THROTTLE_PACING && t->round.sent >= t->round.quota &&
               now_ms - t->round.started_ms < round_limit_ms(t) && throttle_paused_ms(t, now_ms) == 0;
}

uint64_t throttle_ready(struct throttle *t, int64_t now_ms) {
        assert(t);
        if (t->paused_until_ms > now_ms)
                return (uint64_t) (t->paused_until_ms - now_ms);
        restart_if_idle(t, now_ms);
        refill(t, now_ms);
        if (t->phase != THROTTLE_PACING && t->round.sent >= t->round.quota) {
                int64_t left = round_limit_ms(t) - (now_ms - t->round.started_ms);

                if (left > 0)
                        return (uint64_t) left;
                end_round(t, now_ms); /* replies lost: the round trip ends without them */
                if (t->phase != THROTTLE_PACING && t->round.sent >= t->round.quota)
                        return 1;
        }
        if (t->rate <= 0 || t->tokens >= 1.0)
                return 0;
        return (uint64_t) ((1.0 - t->tokens) * 1000.0 / t->rate) + 1;
}

double throttle_rate(const struct throttle *t) {
        assert(t);
        return t->rate;
}
