/* fleetwatch benchmark load generator: a deterministic stream of per-device topics at a fixed rate.
 *
 *   publisher HOST PORT QOS RATE SECONDS DEVICES PREFIX EVENT_START_MS [INDEX COUNT]
 *
 * Publishes RATE msg/s for SECONDS over DEVICES topics PREFIX/site<d%10>/dev<d>/temp, round robin, with
 * JSON payloads {"ts":<ms>,"v":<value>}. EVENT_START_MS 0 stamps the wall clock (live data); otherwise
 * event time starts there and advances 1 ms per device round (a replay of history, as fast as it goes). Waits until every
 * QoS 1 message is acknowledged by the broker, then prints "published=<n> seconds=<s>".
 * With INDEX and COUNT (generator INDEX of COUNT running in parallel), this generator's message i is message
 * i * COUNT + INDEX of the whole stream: the generators interleave over the devices instead of all starting
 * at device 0 (with 100,000 devices and fewer messages than that per generator, they would otherwise
 * publish to the same half of the fleet).
 * Above SAMPLE_FROM devices, SAMPLE evenly spaced devices publish as site "sample" instead of site<d%10>: the
 * harness measures latency on them with one indexed tag lookup (a query over every series, ten times a
 * second, would load the store more than the pipeline under test does).
 */
#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SAMPLE_FROM 10000
#define SAMPLE 500

static volatile long acked = 0;
static void on_publish(struct mosquitto *m, void *u, int mid) { (void)m; (void)u; (void)mid; acked++; }

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 9 && argc != 11) {
    fprintf(stderr, "usage: publisher HOST PORT QOS RATE SECONDS DEVICES PREFIX EVENT_START_MS [INDEX COUNT]\n");
    return 2;
  }
  long index = argc == 11 ? atol(argv[9]) : 0, count = argc == 11 ? atol(argv[10]) : 1;
  const char *host = argv[1];
  int port = atoi(argv[2]), qos = atoi(argv[3]);
  double rate = atof(argv[4]), seconds = atof(argv[5]);
  int devices = atoi(argv[6]);
  const char *prefix = argv[7];
  long long event_start = atoll(argv[8]);
  int live = event_start == 0; /* live: event time is the wall clock at publish */
  mosquitto_lib_init();
  struct mosquitto *m = mosquitto_new(NULL, true, NULL);
  /* A bounded in-flight window: libmosquitto finds each PUBACK by walking its in-flight list, so an
   * unbounded window (hundreds of thousands of QoS 1 messages) makes the publisher itself quadratic. */
  mosquitto_int_option(m, MOSQ_OPT_SEND_MAXIMUM, 1000);
  mosquitto_max_inflight_messages_set(m, 1000);
  mosquitto_publish_callback_set(m, on_publish);
  if (mosquitto_connect(m, host, port, 60) != MOSQ_ERR_SUCCESS) { fprintf(stderr, "connect failed\n"); return 1; }
  mosquitto_loop_start(m);
  char **topics = malloc(sizeof(char *) * devices);
  for (int d = 0; d < devices; d++) {
    topics[d] = malloc(128);
    int sampled = devices > SAMPLE_FROM && d % (devices / SAMPLE) == 0;
    if (sampled)
      snprintf(topics[d], 128, "%s/sample/dev%05d/temp", prefix, d);
    else
      snprintf(topics[d], 128, "%s/site%d/dev%05d/temp", prefix, d % 10, d);
  }
  long total = (long)(rate * seconds);
  double start = now();
  char payload[96];
  for (long i = 0; i < total; i++) {
    /* Pace in slices of 1 ms worth of messages. */
    if (i % 64 == 0) {
      double due = start + i / rate;
      while (now() < due) { struct timespec s = {0, 50000}; nanosleep(&s, NULL); }
    }
    long n = i * count + index; /* this message's place in the whole stream */
    int d = (int)(n % devices);
    long long ts = event_start + (n / devices);
    if (live) {
      struct timespec w; clock_gettime(CLOCK_REALTIME, &w);
      ts = (long long)w.tv_sec * 1000 + w.tv_nsec / 1000000;
    }
    int len = snprintf(payload, sizeof payload, "{\"ts\":%lld,\"v\":%d.%d}", ts, (int)(i % 97), (int)(i % 10));
    int rc;
    while ((rc = mosquitto_publish(m, NULL, topics[d], len, payload, qos, false)) == MOSQ_ERR_OVERSIZE_PACKET) {}
    if (rc != MOSQ_ERR_SUCCESS) { fprintf(stderr, "publish failed: %s\n", mosquitto_strerror(rc)); return 1; }
  }
  double sent = now() - start;
  if (qos > 0) {
    while (acked < total && now() - start < sent + 120) { struct timespec s = {0, 1000000}; nanosleep(&s, NULL); }
  } else {
    struct timespec s = {0, 200000000}; nanosleep(&s, NULL);
  }
  mosquitto_disconnect(m);
  mosquitto_loop_stop(m, false);
  printf("published=%ld seconds=%.3f acked=%ld\n", total, sent, acked);
  return 0;
}
