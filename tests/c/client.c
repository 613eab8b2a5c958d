/* A real C client of qmul: the whole on-device flow on the shipped model,
 * built by the system C compiler against include/qmul.h and the static
 * library (tests/tests/c_client.rs builds and runs it, once more under
 * valgrind in CI).
 *
 *   client MODEL TRAIN_IMAGES TRAIN_LABELS TEST_IMAGES TEST_LABELS RECEIPTS
 *
 * MODEL is replaced by the unlearned model (pass a copy). Prints
 * "C CLIENT OK" and its peak RSS when every check passed. With
 * QMUL_CLIENT_QUICK set (under valgrind) the sets are smaller and the run
 * shorter; every call is still made. */

#include "qmul.h"

#include <math.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);              \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, " (last error: %s)\n", qmul_last_error());          \
            failures++;                                                         \
        }                                                                       \
    } while (0)

#define EXPECT(call, want)                                                      \
    do {                                                                        \
        int32_t got_ = (call);                                                  \
        CHECK(got_ == (want), "%s returned %s, expected %s", #call,             \
              qmul_status_name(got_), qmul_status_name(want));                  \
    } while (0)

/* Progress callback that cancels after `limit` calls (0: never). */
typedef struct {
    int calls;
    int limit;
    int saw_pre_pass;
    volatile int started;
} progress_state;

static int on_progress(const qmul_progress *p, void *user) {
    progress_state *s = (progress_state *)user;
    s->calls++;
    s->started = 1;
    if (p->phase != 0) {
        s->saw_pre_pass = 1;
    }
    return s->limit > 0 && s->calls >= s->limit;
}

typedef struct {
    const qmul_session *session;
    progress_state *progress;
    int32_t status;
} canceller;

static void *cancel_when_started(void *arg) {
    canceller *c = (canceller *)arg;
    while (!c->progress->started) {
        usleep(1000);
    }
    c->status = qmul_session_cancel(c->session);
    return NULL;
}

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s MODEL TRAIN_IMAGES TRAIN_LABELS TEST_IMAGES TEST_LABELS RECEIPTS\n",
                argv[0]);
        return 2;
    }
    const char *model_path = argv[1], *receipts = argv[6];
    printf("qmul %s\n", qmul_version());

    /* The backward's precision is a process-wide choice. */
    EXPECT(qmul_set_backward(99), QMUL_ERR_INVALID_ARGUMENT);
    EXPECT(qmul_set_backward(QMUL_BACKWARD_F32), QMUL_OK);
    CHECK(qmul_get_backward() == QMUL_BACKWARD_F32, "f32 when asked for");
    EXPECT(qmul_set_backward(QMUL_BACKWARD_BF16), QMUL_OK);
    CHECK(qmul_get_backward() == QMUL_BACKWARD_BF16 || qmul_get_backward() == QMUL_BACKWARD_F32,
          "bf16 where the CPU has it, else f32");
    printf("backward: %s\n", qmul_get_backward() == QMUL_BACKWARD_BF16 ? "bf16" : "f32");
    EXPECT(qmul_session_set_device(NULL, QMUL_DEVICE_CPU), QMUL_ERR_NULL_POINTER);

    /* Bad input is a status, never a crash. */
    qmul_model *model = (qmul_model *)1;
    EXPECT(qmul_model_open(NULL, &model), QMUL_ERR_NULL_POINTER);
    CHECK(model == NULL, "a failed open sets *out to NULL");
    EXPECT(qmul_model_open("/nonexistent/model.qmul", &model), QMUL_ERR_IO);
    CHECK(strlen(qmul_last_error()) > 0, "a failure leaves a message");
    const uint8_t junk[64] = {1, 2, 3};
    EXPECT(qmul_model_open_buffer(junk, sizeof junk, &model), QMUL_ERR_BAD_FILE);
    EXPECT(qmul_model_open_buffer(NULL, 10, &model), QMUL_ERR_NULL_POINTER);
    qmul_model_free(NULL);
    qmul_model_free(&model);

    EXPECT(qmul_model_open(model_path, &model), QMUL_OK);
    CHECK(strlen(qmul_last_error()) == 0, "a success clears the message");
    qmul_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    EXPECT(qmul_model_get_info(model, &info), QMUL_OK);
    printf("model: %s, %ux%ux%u input, %u classes, %u-bit (edge %u-bit), scheme %d, %llu parameters, "
           "checksum %s\n",
           info.arch, info.input_h, info.input_w, info.input_c, info.classes, info.bits, info.edge_bits,
           info.scheme, (unsigned long long)info.parameters, info.checksum_verified ? "verified" : "absent");
    CHECK(info.classes == 10 && info.input_h == 28 && info.input_c == 1 && info.bits == 4,
          "the shipped model is a 4-bit 28x28 10-class network");
    char before_sha[65];
    memcpy(before_sha, info.file_sha256, sizeof before_sha);

    qmul_dataset *train = NULL, *test = NULL;
    EXPECT(qmul_dataset_open_idx(argv[2], argv[3], 10, &train), QMUL_OK);
    EXPECT(qmul_dataset_open_idx(argv[4], argv[5], 10, &test), QMUL_OK);
    qmul_dataset *missing = (qmul_dataset *)1;
    EXPECT(qmul_dataset_open_idx(argv[2], "/nonexistent", 10, &missing), QMUL_ERR_IO);
    CHECK(missing == NULL, "a failed open sets *out to NULL");
    size_t n_train = 0;
    EXPECT(qmul_dataset_len(train, &n_train), QMUL_OK);
    CHECK(n_train == 5000, "5000 training images, got %zu", n_train);

    qmul_session_params sp = qmul_session_default_params();
    sp.budget_bytes = 24u << 20; /* small: the automatic batch must fit it */
    qmul_session *session = NULL;
    EXPECT(qmul_session_open(model, &sp, &session), QMUL_OK);
    /* Where unlearning trains: the CPU; a GPU needs a library built with the `gpu` feature. */
    EXPECT(qmul_session_set_device(session, QMUL_DEVICE_CPU), QMUL_OK);
    EXPECT(qmul_session_set_device(session, 7), QMUL_ERR_INVALID_ARGUMENT);
    {
        int32_t rc = qmul_session_set_device(session, QMUL_DEVICE_WGPU);
        CHECK(rc == QMUL_OK || rc == QMUL_ERR_UNSUPPORTED, "a GPU device is set or unsupported");
        EXPECT(qmul_session_set_device(session, QMUL_DEVICE_CPU), QMUL_OK);
    }
    qmul_session_params tiny = sp;
    tiny.budget_bytes = 1000;
    qmul_session *refused = (qmul_session *)1;
    EXPECT(qmul_session_open(model, &tiny, &refused), QMUL_ERR_BUDGET_EXCEEDED);
    CHECK(refused == NULL, "a refused session is NULL");
    qmul_model_free(&model); /* the session keeps its own reference */
    CHECK(model == NULL, "free sets the handle to NULL");

    /* Predict the first 16 test images, u8 and f32. */
    enum { N = 16, PIX = 28 * 28 };
    size_t img_len = 0;
    uint8_t *raw = read_file(argv[4], &img_len);
    CHECK(raw != NULL, "read %s", argv[4]);
    free(raw);
    /* Images come from the data set through the session below; here we use a
     * synthetic batch for the buffer API. */
    uint8_t pixels[N * PIX];
    float fpixels[N * PIX];
    for (int i = 0; i < N * PIX; i++) {
        pixels[i] = (uint8_t)((i * 37) % 256);
        fpixels[i] = pixels[i] / 255.0f;
    }
    float logits[N * 10];
    uint32_t classes[N], classes_f[N];
    EXPECT(qmul_session_predict_u8(session, pixels, sizeof pixels, N, logits, N * 10, classes, N), QMUL_OK);
    EXPECT(qmul_session_predict_f32(session, fpixels, N * PIX, N, NULL, 0, classes_f, N), QMUL_OK);
    CHECK(memcmp(classes, classes_f, sizeof classes) == 0, "u8 and f32 inputs predict alike");
    EXPECT(qmul_session_predict_u8(session, pixels, sizeof pixels - 1, N, logits, N * 10, classes, N),
           QMUL_ERR_BUFFER_SIZE);
    EXPECT(qmul_session_predict_u8(session, pixels, sizeof pixels, N, logits, 7, classes, N), QMUL_ERR_BUFFER_SIZE);
    fpixels[5] = NAN;
    EXPECT(qmul_session_predict_f32(session, fpixels, N * PIX, N, NULL, 0, classes_f, N),
           QMUL_ERR_INVALID_ARGUMENT);

    /* Sets: forget 40 training images by index, keep 200, test on 200
     * (64 and 64 in quick mode). */
    const int quick = getenv("QMUL_CLIENT_QUICK") != NULL;
    const size_t n_keep = quick ? 64 : 200;
    size_t forget[40], retain[200], held[200];
    for (size_t i = 0; i < 40; i++) forget[i] = i * 97 + 3;
    for (size_t i = 0; i < 200; i++) retain[i] = i * 23 + 1;
    for (size_t i = 0; i < 200; i++) held[i] = i;
    for (size_t i = 0; i < 200; i++)
        for (size_t j = 0; j < 40; j++)
            if (retain[i] == forget[j]) retain[i] = 4999 - i;
    size_t dup[2] = {5, 5}, out_of_range[1] = {5000};
    EXPECT(qmul_session_set_forget_indices(session, train, dup, 2), QMUL_ERR_INVALID_ARGUMENT);
    EXPECT(qmul_session_set_forget_indices(session, train, out_of_range, 1), QMUL_ERR_INVALID_ARGUMENT);
    EXPECT(qmul_session_set_forget_indices(session, train, forget, 0), QMUL_ERR_INVALID_ARGUMENT);
    uint32_t bad_labels[N];
    for (int i = 0; i < N; i++) bad_labels[i] = 3;
    bad_labels[4] = 10;
    EXPECT(qmul_session_set_forget(session, pixels, sizeof pixels, bad_labels, N), QMUL_ERR_INVALID_ARGUMENT);
    EXPECT(qmul_session_set_forget(session, pixels, sizeof pixels - 3, bad_labels, N), QMUL_ERR_BUFFER_SIZE);
    EXPECT(qmul_session_set_forget(session, NULL, sizeof pixels, bad_labels, N), QMUL_ERR_NULL_POINTER);
    EXPECT(qmul_session_set_forget_indices(session, train, forget, 40), QMUL_OK);
    EXPECT(qmul_session_set_retain_indices(session, train, retain, n_keep), QMUL_OK);
    EXPECT(qmul_session_set_test_indices(session, test, held, n_keep), QMUL_OK);

    /* Cancel from the callback, within one batch, during a pre-pass. */
    qmul_unlearn_params up = qmul_unlearn_default_params(QMUL_METHOD_QMUL);
    up.epochs = 1;
    up.lr = 0.05f;
    up.batch = 16;
    progress_state ps = {0, 1, 0, 0};
    /* A caller built against the first version of the struct (before
     * `schedule`): its shorter struct_size is accepted, `schedule` defaults. */
    qmul_unlearn_params v1 = up;
    v1.struct_size = (uint32_t)offsetof(qmul_unlearn_params, schedule);
    EXPECT(qmul_session_unlearn(session, &v1, on_progress, &ps, NULL), QMUL_ERR_CANCELLED);
    CHECK(ps.calls == 1 && ps.saw_pre_pass, "cancelled after the first pre-pass batch (%d calls)", ps.calls);
    qmul_commit_params cp = qmul_commit_default_params();
    EXPECT(qmul_session_commit(session, &cp, NULL), QMUL_ERR_INVALID_ARGUMENT);

    /* Cancel from a second thread. */
    qmul_unlearn_params longer = up;
    longer.epochs = 200;
    progress_state ps2 = {0, 0, 0, 0};
    canceller c = {session, &ps2, -1};
    pthread_t t;
    pthread_create(&t, NULL, cancel_when_started, &c);
    EXPECT(qmul_session_unlearn(session, &longer, on_progress, &ps2, NULL), QMUL_ERR_CANCELLED);
    pthread_join(t, NULL);
    CHECK(c.status == QMUL_OK, "qmul_session_cancel from another thread");
    printf("cancelled from a second thread after %d progress calls\n", ps2.calls);

    /* Bad settings. */
    qmul_unlearn_params bad = up;
    bad.lr = NAN;
    EXPECT(qmul_session_unlearn(session, &bad, NULL, NULL, NULL), QMUL_ERR_INVALID_ARGUMENT);
    bad = up;
    bad.method = 42;
    EXPECT(qmul_session_unlearn(session, &bad, NULL, NULL, NULL), QMUL_ERR_INVALID_ARGUMENT);
    bad = up;
    bad.schedule = 9;
    EXPECT(qmul_session_unlearn(session, &bad, NULL, NULL, NULL), QMUL_ERR_INVALID_ARGUMENT);
    bad = up;
    bad.struct_size = 3;
    EXPECT(qmul_session_unlearn(session, &bad, NULL, NULL, NULL), QMUL_ERR_INVALID_ARGUMENT);

    /* Unlearn for real, with the automatic batch. */
    up.batch = 0;
    up.schedule = 0; /* the default: the reference code's per-epoch cosine */
    up.epochs = quick ? 1 : 3;
    up.lr = 0.1f;
    progress_state ps3 = {0, 0, 0, 0};
    qmul_unlearn_result ur;
    memset(&ur, 0, sizeof ur);
    ur.struct_size = sizeof ur;
    EXPECT(qmul_session_unlearn(session, &up, on_progress, &ps3, &ur), QMUL_OK);
    printf("unlearned: batch %u, %u epoch(s), %.2f s, %d progress calls; memory: %.1f MiB held, planned +%.1f, "
           "measured +%.1f MiB\n",
           ur.batch, ur.epochs, ur.seconds, ps3.calls, ur.resident_bytes / 1048576.0,
           ur.planned_bytes / 1048576.0, ur.measured_bytes / 1048576.0);
    CHECK(ur.batch > 0 && ur.batch <= 256, "automatic batch %u", ur.batch);
    CHECK(ur.measured_bytes <= ur.planned_bytes, "measured %llu <= planned %llu",
          (unsigned long long)ur.measured_bytes, (unsigned long long)ur.planned_bytes);

    qmul_verification v;
    memset(&v, 0, sizeof v);
    v.struct_size = sizeof v;
    EXPECT(qmul_session_verify(session, &v), QMUL_OK);
    printf("verify: FA %.2f -> %.2f, MIA %.2f -> %.2f; deletion check %s (%s)\n", v.fa_before, v.fa_after,
           v.mia_before, v.mia_after, v.passed ? "passed" : "failed", v.verdict);
    CHECK(v.has_mia == 1, "MIA with retain and test sets");
    CHECK(strncmp(v.verdict, "random: ", 8) == 0, "a random forget set: %s", v.verdict);
    /* A caller built before `passed` and `verdict` existed gets the rest. */
    qmul_verification v_old;
    memset(&v_old, 0x5a, sizeof v_old);
    v_old.struct_size = (uint32_t)offsetof(qmul_verification, passed);
    EXPECT(qmul_session_verify(session, &v_old), QMUL_OK);
    CHECK(v_old.fa_after == v.fa_after && v_old.passed == 0x5a5a5a5a, "short struct filled up to its size");
    qmul_scores sc;
    memset(&sc, 0, sizeof sc);
    sc.struct_size = sizeof sc;
    EXPECT(qmul_session_evaluate(session, 1, &sc), QMUL_OK);
    printf("evaluate: FA %.2f RA %.2f TA %.2f MIA %.2f (entropy %.2f, modified entropy %.2f, loss %.2f)\n",
           sc.fa, sc.ra, sc.ta, sc.mia, sc.mia_entropy, sc.mia_m_entropy, sc.mia_loss);
    CHECK(sc.mia_entropy >= 0 && sc.mia_entropy <= 100 && sc.mia_loss >= 0 && sc.mia_loss <= 100,
          "the extra attacks are efficacies in percent");
    EXPECT(qmul_session_evaluate(session, 7, &sc), QMUL_ERR_INVALID_ARGUMENT);

    /* Commit with a receipt; the receipt log may not be the model. */
    cp.receipts_path = model_path;
    EXPECT(qmul_session_commit(session, &cp, NULL), QMUL_ERR_INVALID_ARGUMENT);
    cp.receipts_path = receipts;
    cp.request = "ticket-42";
    qmul_commit_result cr;
    memset(&cr, 0, sizeof cr);
    cr.struct_size = sizeof cr;
    /* A deletion that fails the check is refused (also for a caller built
     * before `force` existed, whose struct ends before it) unless forced. */
    if (!v.passed) {
        qmul_commit_params cp_old = cp;
        cp_old.struct_size = (uint32_t)offsetof(qmul_commit_params, force);
        EXPECT(qmul_session_commit(session, &cp_old, &cr), QMUL_ERR_NOT_FORGOTTEN);
        EXPECT(qmul_session_commit(session, &cp, &cr), QMUL_ERR_NOT_FORGOTTEN);
        cp.force = 2;
        EXPECT(qmul_session_commit(session, &cp, &cr), QMUL_ERR_INVALID_ARGUMENT);
        cp.force = 1;
    }
    EXPECT(qmul_session_commit(session, &cp, &cr), QMUL_OK);
    CHECK(cr.receipt_seq == 1, "first receipt, got %llu", (unsigned long long)cr.receipt_seq);
    CHECK(strcmp(cr.model_before_sha256, before_sha) == 0, "receipt names the model opened");
    CHECK(strcmp(cr.model_before_sha256, cr.model_after_sha256) != 0, "the model changed");
    printf("committed: model %.12s... -> %.12s..., receipt %llu\n", cr.model_before_sha256,
           cr.model_after_sha256, (unsigned long long)cr.receipt_seq);

    /* Read and verify the receipt. */
    qmul_receipt_log_info li;
    memset(&li, 0, sizeof li);
    li.struct_size = sizeof li;
    EXPECT(qmul_receipts_verify(receipts, &li), QMUL_OK);
    CHECK(li.valid == 1 && li.records == 1, "one valid record");
    size_t need = 0;
    EXPECT(qmul_receipts_get(receipts, 0, NULL, 0, &need), QMUL_OK);
    char small[8];
    EXPECT(qmul_receipts_get(receipts, 0, small, sizeof small, &need), QMUL_ERR_BUFFER_SIZE);
    char *rec = malloc(need);
    EXPECT(qmul_receipts_get(receipts, 0, rec, need, NULL), QMUL_OK);
    CHECK(strstr(rec, "\"request\":\"ticket-42\"") != NULL, "the receipt carries the request");
    CHECK(strstr(rec, cr.model_after_sha256) != NULL, "the receipt carries the new model's hash");
    CHECK(strstr(rec, "\"verdict\":{") != NULL, "the receipt carries the deletion check");
    CHECK(v.passed || strstr(rec, "\"forced\":true") != NULL, "a forced commit says so");
    printf("receipt (%zu bytes): %.120s...\n", need, rec);
    free(rec);
    EXPECT(qmul_receipts_get(receipts, 5, NULL, 0, &need), QMUL_ERR_INVALID_ARGUMENT);

    /* The committed file opens, from its path and from a buffer, as the new model. */
    qmul_model *again = NULL;
    EXPECT(qmul_model_open(model_path, &again), QMUL_OK);
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    EXPECT(qmul_model_get_info(again, &info), QMUL_OK);
    CHECK(strcmp(info.file_sha256, cr.model_after_sha256) == 0, "the file is the committed model");
    size_t mlen = 0;
    uint8_t *mbytes = read_file(model_path, &mlen);
    qmul_model *from_buf = NULL;
    EXPECT(qmul_model_open_buffer(mbytes, mlen, &from_buf), QMUL_OK);
    free(mbytes);
    qmul_session *s2 = NULL;
    EXPECT(qmul_session_open(from_buf, NULL, &s2), QMUL_OK);
    EXPECT(qmul_session_predict_u8(s2, pixels, sizeof pixels, N, NULL, 0, classes, N), QMUL_OK);

    qmul_session_free(&s2);
    qmul_session_free(&session);
    qmul_session_free(&session); /* twice: the first set it to NULL */
    qmul_model_free(&again);
    qmul_model_free(&from_buf);
    qmul_dataset_free(&train);
    qmul_dataset_free(&test);
    qmul_dataset_free(NULL);

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak RSS: %ld KiB\n", ru.ru_maxrss);
    if (failures) {
        printf("C CLIENT FAILED: %d checks\n", failures);
        return 1;
    }
    printf("C CLIENT OK\n");
    return 0;
}
