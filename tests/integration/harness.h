/* SPDX-License-Identifier: MIT */
/* Test harness: real mosquitto and kuimen processes on free loopback ports, Paho test clients. */
#ifndef KM_HARNESS_H
#define KM_HARNESS_H

#include <MQTTAsync.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct h_proc {
        pid_t pid;
        char log[256];
        long from; /* the log's size when this run of the process started (h_log_wait) */
};

struct h_broker {
        struct h_proc p;
        int port;
        char dir[200];
        char conf[256];
};

/* What a broken setup does: NULL (the default) fails the running Criterion test;
 * programs outside Criterion (the benchmarks) set a function that reports the message
 * and exits. It must not return. */
extern void (*h_fail_hook)(const char *msg);

/* A fresh directory under /tmp for one test; removed by h_cleanup. */
void h_tmpdir(char *out, size_t n, const char *tag);
void h_cleanup(const char *dir);
int h_free_port(void);
/* Publishes payload on topic at QoS 1 with mosquitto_pub (client id "terminal"), as a
 * terminal would; returns its exit code. */
int h_mosquitto_pub(int port, const char *topic, const char *payload);
/* A device simulator's UDP control port (tests/sim): sends cmd from fd to 127.0.0.1:port
 * and puts the answer in ans (n bytes; ans NULL: discarded), retrying while the
 * simulator does not answer; fails the test on "error..." or silence, naming sim and
 * its log. */
void h_sim_ctl(int fd, int port, const char *sim, const char *log, const char *cmd, char *ans, size_t n);
/* The counter key of the simulated device name in the simulator's "stats" answer. */
long h_sim_stat(int fd, int port, const char *sim, const char *log, const char *name, const char *key);
bool h_wait_port(int port, int timeout_ms);

/* Starts mosquitto on port (0: pick) with persistence in dir; extra is appended to
 * its config. Restart with the same struct to keep port and persistence. */
void h_broker_start(struct h_broker *b, const char *dir, int port, const char *extra);
/* As h_broker_start, with head (may be NULL) before the first listener: global options
 * that must come first (per_listener_settings). */
void h_broker_start_ex(struct h_broker *b, const char *dir, int port, const char *head, const char *extra);
void h_broker_restart(struct h_broker *b);

/* Starts kuimen (KM_KUIMEN from meson) with args; its stderr goes to log. */
void h_kuimen_start(struct h_proc *p, const char *log, const char *const *args);
/* Runs kuimen with args to its end; its stdout and stderr into out (NUL-terminated).
 * Returns its exit code, -1 when it did not exit. */
int h_kuimen_run(const char *const *args, char *out, size_t len);
/* Sends sig and waits; returns the exit status as waitpid's, or -1. */
int h_stop(struct h_proc *p, int sig);
/* Counts lines of p's log containing needle. */
int h_log_count(const struct h_proc *p, const char *needle);
/* Waits until p's log contains needle, written since the process was last started
 * (a restarted process appends to the same log: a line of its earlier run is no
 * answer). h_log_count counts the whole log. */
bool h_log_wait(const struct h_proc *p, const char *needle, int timeout_ms);

/* Writes a kuimen config for node with local and center broker ports and extra lines. */
void h_write_conf(const char *path, const char *node, const char *dir, int local_port, int center_port,
                  const char *extra);

/* h_write_conf for a center over TLS: the link's uri ssl://127.0.0.1:<tls_port>, with
 * ca = dir/ca.crt, cert and key dir/<client>.crt and .key (h_make_certs). */
void h_write_conf_tls(const char *path, const char *node, const char *dir, int local_port, int tls_port,
                      const char *client, const char *extra);

/* Certificates for one test, made with openssl in dir (EC P-256: fast):
 *   ca        the center's CA (trusted by kuimen and by the center broker)
 *   server    CN localhost, SAN IP:127.0.0.1 + DNS:localhost, by ca
 *   other     CN/SAN other.example, by ca (a valid chain with the wrong name)
 *   client    CN north, by ca (kuimen's client certificate)
 *   south     CN south, by ca (another base's certificate)
 *   rogue-ca  an unrelated CA; rogue: CN north, by rogue-ca */
void h_make_certs(const char *dir);
/* A center broker with two listeners: port (0: pick) plain, for the test's own clients,
 * and *tls_port (0: pick; the port taken is written back) TLS with certificate
 * dir/<server>.crt, requiring a client certificate by dir/ca.crt whose CN becomes the
 * user name; tls_extra (NULL: none) is added to the TLS listener (an acl_file). Needs
 * h_make_certs(dir) first. h_broker_restart restarts both. */
void h_broker_start_tls(struct h_broker *b, const char *dir, int port, const char *server, const char *tls_extra,
                        int *tls_port);

/* Writes text to path (a dictionary, a config): one helper rather than one per test file. */
void h_write_text(const char *path, const char *text);

/* The MQTT version of the Paho clients made from now on (h_sub, h_rec, h_pub): 5 (the
 * default) or 4 (3.1.1, for a broker that speaks only that). Subscribers read origin
 * and id from the user properties, or else from kuimen's 3.1.1 envelope (stripped from
 * the payload they keep). */
extern int h_mqtt_version;

/* A subscriber that records every message (deduplicated by kuimen-id). */
struct h_rx {
        char topic[96];
        char payload[64];
        uint64_t id;
        char origin[32];
};

/* rx holds each distinct payload once, in arrival order. dups counts copies with an id
 * seen before (subscribers drop those by kuimen-id); redelivered counts copies of a
 * payload under a new id (the local broker resending what a killed kuimen had not yet
 * acknowledged). */
struct h_sub {
        MQTTAsync c;
        pthread_mutex_t mu;
        struct h_rx *rx;
        size_t n, cap, dups, redelivered, total;
        uint64_t *seen; /* sorted (origin, kuimen-id) keys */
        size_t nseen;
        uint32_t *set; /* open-addressing hash set of rx indexes + 1, by payload */
        size_t setcap;
        bool connected;
};

void h_sub_start(struct h_sub *s, int port, const char *id, const char *filter, bool persistent);
/* Distinct payloads so far (s->n, read under its lock). */
size_t h_sub_count(struct h_sub *s);
size_t h_sub_wait(struct h_sub *s, size_t want, int timeout_ms);
void h_sub_stop(struct h_sub *s);

/* One message as the broker delivered it: what h_sub keeps 63 bytes of, whole. */
struct h_msg {
        char *topic;
        char *payload; /* len bytes, and a NUL after them */
        int len;
        uint64_t id;                /* kuimen-id, 0 when there is none */
        char origin[32], relay[32]; /* kuimen-origin, kuimen-relay */
        int64_t at;                 /* h_now_ms() on arrival */
};

/* A subscriber that keeps every delivery whole, in arrival order, duplicates included:
 * for tests that compare exact bytes or long payloads. Read m[] under mu while it runs. */
struct h_rec {
        MQTTAsync c;
        pthread_mutex_t mu;
        struct h_msg *m;
        size_t n, cap;
};

/* Connects (clean session) and subscribes to filter at QoS 1, SUBACK awaited. */
void h_rec_start(struct h_rec *r, int port, const char *id, const char *filter);
size_t h_rec_count(struct h_rec *r);
/* Waits until want messages arrived or timeout; returns how many did. */
size_t h_rec_wait(struct h_rec *r, size_t want, int timeout_ms);
/* Disconnects; what was recorded stays readable until h_rec_free. */
void h_rec_stop(struct h_rec *r);
void h_rec_free(struct h_rec *r);
/* Publishes at QoS 1 through the recorder's own connection (one connection less to set
 * up: Paho takes most of a second for each) and waits for the PUBACK: 0 or Paho's error. */
int h_rec_send(struct h_rec *r, const char *topic, const char *payload);

/* A QoS 1 publisher that counts PUBACKs; automatic reconnect. */
struct h_pub {
        MQTTAsync c;
        pthread_mutex_t mu;
        uint64_t sent, acked, failed;
        char (*acked_payloads)[64]; /* payloads whose PUBACK came back */
        int version; /* h_mqtt_version when it started */
        size_t cap;
};

void h_pub_start(struct h_pub *p, int port, const char *id);
/* Publishes; returns 0 or a Paho error (e.g. disconnected). */
int h_pub_send(struct h_pub *p, const char *topic, const char *payload);
/* Waits until every send was answered (acked or failed). */
bool h_pub_flush(struct h_pub *p, int timeout_ms);
void h_pub_stop(struct h_pub *p);

void h_sleep_ms(int ms);
int64_t h_now_ms(void);

/* Checks per-topic order of "seq" payloads ("<topic-index>:<seq>"): returns the number
 * of out-of-order first deliveries (0 is right). */
size_t h_order_violations(struct h_sub *s);

/* ---- a TCP proxy: a fiber that can fail ---------------------------------------------- */

#define H_PROXY_MAXC 32

/* Forwards connections on port to 127.0.0.1:target from a thread of its own, so that a
 * test can break the path under a live connection: set cut for a silent cut (nothing is
 * read, written, accepted or closed, so to both ends the path just goes quiet, no FIN
 * or RST, as a cut fiber), or down for a loud one (every connection closed, new ones
 * closed as they come: the broker sends the client's will at once). Clear either and
 * it forwards again, the old connections too. */
struct h_proxy {
        int port, target, lfd;
        atomic_bool cut, down, stop;
        /* A broker that speaks only MQTT 3.1.1 in front of a real one (Mosquitto has no
         * option for that: its protocol options are per bridge): set before a client
         * connects, 1 refuses an MQTT 5 CONNECT as RabbitMQ 3.10 does (the socket
         * closed, no CONNACK), 2 as the 3.1.1 spec says (CONNACK return code 1, then
         * the close); a 3.1.1 CONNECT and all after it pass. refused_v5 counts. */
        atomic_int v311_only;
        atomic_ulong refused_v5;
        int a[H_PROXY_MAXC], b[H_PROXY_MAXC]; /* accepted side, target side */
        bool checked[H_PROXY_MAXC];           /* its CONNECT went through the gate */
        int n;
        pthread_t t;
};

/* Listens on a free loopback port (p->port) and forwards to target. */
void h_proxy_start(struct h_proxy *p, int target);
/* Stops the thread and closes every socket. */
void h_proxy_stop(struct h_proxy *p);

/* ---- a UDP relay between two sim ends ------------------------------------------------ */

#define H_RELAY_MAXDG 4096
#define H_RELAY_KEEP 256
#define H_RELAY_KEEP_BYTES 2048

/* One UDP socket in the middle of a sim link, so that a test sees and breaks the air:
 * each end takes the relay (port) as its peer; the relay forwards base -> center and
 * center -> base by the sender's port and records what the base put on the air. cut is
 * a silent cut: both ways dropped (still recorded), no socket closed. */
struct h_relay {
        int fd, port, base_port, center_port;
        atomic_bool cut, stop;
        atomic_ulong up, down; /* datagrams forwarded base -> center, center -> base */
        pthread_t t;
        pthread_mutex_t mu; /* guards what follows */
        int64_t at[H_RELAY_MAXDG]; /* h_now_ms() of each of the base's datagrams (the first MAXDG) */
        size_t len[H_RELAY_MAXDG];
        uint8_t hdr[H_RELAY_MAXDG]; /* each one's first byte (a frame's version and type) */
        size_t n;      /* of the base's datagrams recorded */
        size_t n_back; /* datagrams the center sent the base */
        /* the bytes of the first H_RELAY_KEEP datagrams each way, for replays */
        uint8_t (*kept_up)[H_RELAY_KEEP_BYTES], (*kept_down)[H_RELAY_KEEP_BYTES];
        size_t kept_up_len[H_RELAY_KEEP], kept_down_len[H_RELAY_KEEP];
        size_t n_kept_up, n_kept_down;
};

/* Binds a free loopback port (r->port) between the sim ends listening on base_port
 * and center_port. */
void h_relay_start(struct h_relay *r, int base_port, int center_port);
/* Datagrams recorded from the base, their bytes in *bytes and the center's count in
 * *back (either may be NULL). */
size_t h_relay_count(struct h_relay *r, size_t *bytes, size_t *back);
/* Puts len bytes on the air to the center from its peer's address, as if from the
 * base; returns sendto's result. */
ssize_t h_relay_to_center(struct h_relay *r, const void *buf, size_t len);
/* The same towards the base, as if from the center. */
ssize_t h_relay_to_base(struct h_relay *r, const void *buf, size_t len);
void h_relay_stop(struct h_relay *r);

/* ---- a base and a center kuimen over a sim link ---------------------------------------- */

/* What differs between pairs; NULL and false take the default. Each string is config
 * text put where its name says, so that a pair needs no key twice. */
struct h_pair_conf {
        const char *link;         /* the sim link's name: "sat" */
        const char *link_keys;    /* keys of both ends' [link <link>] */
        const char *base_node;    /* keys of the base's [node] (e.g. link_status) */
        const char *base_local;   /* keys of the base's [local], then any sections before its sim link */
        const char *base_extra;   /* more keys of the base's sim link, then any sections */
        const char *center_node;  /* keys of the center's [node] */
        const char *center_extra; /* more keys of the center's sim link, then any sections */
        const char *peers;        /* the center's peers: "north" */
        const char *center_local; /* keys of the center's [local] */
        int center_local_port;    /* the port the center kuimen takes for its broker (a gate
                                     in front of p->center); 0: p->center's */
        bool relay;               /* the sim ends talk through p->relay */
        bool debug;               /* both kuimen with --log-level debug */
};

/* A base "north" and a center "county", each with its broker, joined by a sim link:
 * the setup of every narrow-link test, written once. */
struct h_pair {
        char dir[200], bconf[300], cconf[300], blog[300], clog[300];
        char link[32];
        struct h_broker local, center;
        struct h_proc base, ctr;
        struct h_relay relay; /* with conf->relay */
        bool relayed;
        int base_exit, ctr_exit; /* waitpid statuses from h_pair_stop, -1 if stopped before */
};

/* A directory for tag and both brokers started: a test subscribes, and writes the
 * files its configs name, before h_pair_start. */
void h_pair_init(struct h_pair *p, const char *tag);
/* Writes both configs (plugin_dir from KM_SIM_PLUGIN_DIR), starts the relay if conf
 * asks, the center and then the base kuimen, and waits until both are on their brokers
 * and both sim links are open. */
void h_pair_start(struct h_pair *p, const struct h_pair_conf *conf);
/* Stops what still runs: the base and then the center kuimen (SIGTERM), the relay, both
 * brokers. The directory stays for the caller's h_cleanup. */
void h_pair_stop(struct h_pair *p);

/* ---- any program, as kuimen is started --------------------------------------------- */

/* Starts argv (argv[0] looked up in PATH) as h_kuimen_start starts kuimen: stdout and
 * stderr appended to log, killed with the test; env (NULL, or NULL-terminated
 * "KEY=value" strings) is added to its environment. For kuimen under a wrapper
 * (setpriv) or with an LD_PRELOAD. */
void h_spawn(struct h_proc *p, const char *log, char *const argv[], const char *const *env);

/* Runs kuimenctl (KM_KUIMENCTL from meson) --socket sock with args (a shell word list);
 * its stdout and stderr into out (NUL-terminated). Returns its exit code, -1 when it
 * did not exit. */
int h_kuimenctl(const char *sock, const char *args, char *out, size_t n);

/* ---- kuimenctl ---------------------------------------------------------------------- */
/* The kuimenctl beside KM_KUIMEN (or KM_KUIMENCTL). */
const char *h_ctl_path(void);
/* kuimenctl ARGS (a JSON reply: "links --json") on the control socket sock, parsed
 * (the test fails on an error); the caller deletes it. */
struct cJSON *h_ctl_json(const char *sock, const char *args);
/* h_ctl_json(sock, "status --json"). */
struct cJSON *h_status_json(const char *sock);
/* An operator (MQTT op_version) publishes payload on kuimen/north/cmd/valve at the
 * center broker; the test fails unless the base's local broker gets exactly that on
 * cmd/valve within 15 s (log: where to look). */
void h_assert_command_down(int local_port, int center_port, int op_version, const char *payload, const char *log);
/* The link named name in a status reply (the test fails without one). */
const struct cJSON *h_status_link(const struct cJSON *status, const char *name);
/* A string member of o, "(none)" when absent. */
const char *h_json_str(const struct cJSON *o, const char *key);
/* A number member of o, -1 when absent. */
double h_json_num(const struct cJSON *o, const char *key);

/* ---- RabbitMQ 3.10 (Debian) with its MQTT plugin: one node or a cluster ----------- */
#define H_RABBIT_MAX 3
struct h_rabbit {
        struct h_proc node;
        int mqtt_port, tls_port, amqp_port, dist_port;
        char name[64]; /* kmN<port>@localhost */
        char dir[256];
};
/* n nodes (1 to H_RABBIT_MAX) on free loopback ports, with an epmd of their own (the
 * test's child, not a daemon that outlives it), one Erlang cookie, node names, mnesia,
 * log and plugin directories under dir. With tls, each node also listens for MQTT over
 * TLS with dir/ca.crt, dir/server.crt and dir/server.key, which the caller makes. */
struct h_rabbit_cluster {
        struct h_proc epmd;
        int epmd_port, n;
        char dir[200];
        struct h_rabbit node[H_RABBIT_MAX];
        int64_t boot_ms, join_ms; /* how long the nodes took to listen, and to join */
        int joined_by_ctl;        /* nodes that had booted alone and joined with rabbitmqctl */
        int tries;                /* 2: the first start stalled (no MQTT listener) and was redone */
};
/* Starts the n nodes at once (Erlang is slow to boot: in parallel, each with one
 * scheduler that does not spin), nodes 2..n set to join node 1 as they boot (classic
 * config peer discovery), waits for their MQTT listeners, joins any node that booted
 * alone to node 1 with rabbitmqctl (stop_app, join_cluster, start_app, in parallel) and
 * sets the policy that mirrors the MQTT plugin's subscription queues on every node
 * (policy; NULL: none), and waits until every listener is back. A node with no MQTT
 * listener after 60 s (RabbitMQ's own start stalled: rabbit_node) starts the cluster
 * again once, afresh. Fails the test with the node's log when something does not come up. */
void h_rabbit_start(struct h_rabbit_cluster *c, const char *dir, int n, bool tls, const char *policy);
/* rabbitmqctl -n <node i> args... (a shell word list, quoted by the caller); its output
 * in out. Returns its exit code. */
int h_rabbitmqctl(const struct h_rabbit_cluster *c, int i, const char *args, char *out, size_t len);
/* SIGKILL to node i (a node that dies, not one that leaves). */
void h_rabbit_kill(struct h_rabbit_cluster *c, int i);
/* Kills every node (their state dies with the test's directory; a clean stop takes
 * seconds) and the epmd. */
void h_rabbit_stop(struct h_rabbit_cluster *c);

#endif
