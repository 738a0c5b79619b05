/* curl-floor: the cheapest client libcurl allows, for the benchmark only.
 *
 * It sends N closesession calls through one curl multi handle, at most P at
 * once, and does nothing else: the URL (already signed by the harness) and
 * the bodies are built with snprintf, options are set once per easy handle,
 * replies are counted but not parsed, nothing is logged, no state is kept.
 * curl is driven with curl_multi_socket_action() on a bare epoll loop, the
 * event-driven interface with the least overhead. Its CPU time is therefore
 * a floor for any client that makes the same calls with libcurl;
 * bench/run.py reports it next to the daemon and the Python client. It is
 * not part of the daemon.
 *
 * Usage: curl-floor URL N P SESSION_PREFIX
 *   URL             full closesession URL, query string included
 *   N               number of calls; session ids are SESSION_PREFIX0 ...
 *   P               transfers in flight at most
 * Exit status 0 when every call got HTTP 200, 1 otherwise. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>

struct floor_loop {
        int epfd;
        CURLM *multi;
        long timeout_ms; /* what curl last asked for; -1: none */
};

struct slot {
        CURL *easy;
        char body[160];
};

/* CURLMOPT_SOCKETFUNCTION: mirrors curl's interest in the epoll set. */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
        struct floor_loop *l = userp;
        struct epoll_event ev = { .data.fd = fd };

        (void) easy;
        if (what == CURL_POLL_REMOVE) {
                epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
                return 0;
        }
        ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0u) | (what & CURL_POLL_OUT ? EPOLLOUT : 0u);
        if (socketp)
                return epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev);
        curl_multi_assign(l->multi, fd, l); /* any non-NULL marks "known" */
        return epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* CURLMOPT_TIMERFUNCTION */
static int on_timer(CURLM *multi, long timeout_ms, void *userp) {
        (void) multi;
        ((struct floor_loop *) userp)->timeout_ms = timeout_ms;
        return 0;
}

/* CURLOPT_WRITEFUNCTION: the reply is only counted. */
static size_t discard(char *data, size_t size, size_t nmemb, void *userp) {
        (void) data;
        (void) userp;
        return size * nmemb;
}

static int start(CURLM *multi, struct slot *s, const char *prefix, long i) {
        snprintf(s->body, sizeof s->body,
                 "{\"Header\":{},\"Payload\":{\"ReqId\":\"%032lx\",\"SessionId\":\"%s%ld\"}}", i + 1, prefix,
                 i);
        curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, s->body);
        return curl_multi_add_handle(multi, s->easy) == CURLM_OK ? 0 : -1;
}

int main(int argc, char **argv) {
        struct floor_loop l = { .timeout_ms = -1 };
        struct curl_slist *headers = NULL;
        struct slot *slots;
        long n, p, next = 0, ok = 0, done = 0;

        if (argc != 5 || (n = atol(argv[2])) < 0 || (p = atol(argv[3])) < 1) {
                fprintf(stderr, "usage: curl-floor URL N P SESSION_PREFIX\n");
                return 2;
        }
        curl_global_init(CURL_GLOBAL_DEFAULT);
        l.epfd = epoll_create1(EPOLL_CLOEXEC);
        l.multi = curl_multi_init();
        slots = calloc((size_t) p, sizeof *slots);
        headers = curl_slist_append(headers, "Content-Type: application/json;charset=utf-8");
        headers = curl_slist_append(headers, "Expect:");
        if (l.epfd < 0 || !l.multi || !slots || !headers)
                return 1;
        curl_multi_setopt(l.multi, CURLMOPT_SOCKETFUNCTION, on_socket);
        curl_multi_setopt(l.multi, CURLMOPT_SOCKETDATA, &l);
        curl_multi_setopt(l.multi, CURLMOPT_TIMERFUNCTION, on_timer);
        curl_multi_setopt(l.multi, CURLMOPT_TIMERDATA, &l);
        curl_multi_setopt(l.multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, p);
        curl_multi_setopt(l.multi, CURLMOPT_MAXCONNECTS, p);
        for (long i = 0; i < p; i++) {
                CURL *e = curl_easy_init();

                if (!e)
                        return 1;
                curl_easy_setopt(e, CURLOPT_URL, argv[1]);
                curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
                curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
                curl_easy_setopt(e, CURLOPT_PRIVATE, &slots[i]);
                curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
                slots[i].easy = e;
        }
        for (long i = 0; i < p && next < n; i++)
                if (start(l.multi, &slots[i], argv[4], next++) < 0)
                        return 1;
        while (done < n) {
                struct epoll_event evs[64];
                CURLMsg *msg;
                int k, left, running;

                /* curl's timer is one-shot: forget it once it has fired. A
                 * relative wait restarted after socket events can only run
                 * late, which costs wall time here, not CPU. */
                k = epoll_wait(l.epfd, evs, 64, l.timeout_ms < 0 ? 1000 : (int) l.timeout_ms);
                if (k <= 0) {
                        l.timeout_ms = -1;
                        curl_multi_socket_action(l.multi, CURL_SOCKET_TIMEOUT, 0, &running);
                }
                for (int j = 0; j < k; j++)
                        curl_multi_socket_action(
                                l.multi, evs[j].data.fd,
                                (evs[j].events & EPOLLIN ? CURL_CSELECT_IN : 0) |
                                        (evs[j].events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
                                        (evs[j].events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0),
                                &running);
                while ((msg = curl_multi_info_read(l.multi, &left))) {
                        struct slot *s;
                        long status = 0;

                        if (msg->msg != CURLMSG_DONE)
                                continue;
                        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &s);
                        curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
                        ok += msg->data.result == CURLE_OK && status == 200;
                        done++;
                        curl_multi_remove_handle(l.multi, s->easy);
                        if (next < n && start(l.multi, s, argv[4], next++) < 0)
                                return 1;
                }
        }
        for (long i = 0; i < p; i++)
                curl_easy_cleanup(slots[i].easy);
        curl_multi_cleanup(l.multi);
        curl_slist_free_all(headers);
        free(slots);
        curl_global_cleanup();
        printf("{\"calls\": %ld, \"ok\": %ld}\n", n, ok);
        return ok == n ? 0 : 1;
}
