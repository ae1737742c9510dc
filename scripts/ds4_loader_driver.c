/* A load-only driver for antirez/ds4, built by scripts/ds4-loader-check against a ds4 source
 * tree the user fetched (no ds4 code lives in this repository: the tree is given on the command
 * line and this file includes its ds4.c, compiled with -DDS4_NO_GPU like ds4's own `make cpu`).
 *
 *   ds4_loader_driver TRUNK.gguf [MTP.gguf]
 *
 * 1. ds4_engine_open() with the CPU backend: ds4's own load path, the one `ds4 --cpu --inspect`
 *    takes (model_open -> parse_metadata/parse_tensors, vocab_load, config_validate_model,
 *    weights_bind -> weights_validate_layout; with MTP.gguf model_open + mtp_weights_bind ->
 *    mtp_weights_validate_layout). Any failed check there prints ds4's message and exits 1.
 * 2. Prints what ds4 bound: tensors bound by name of tensors in the file, the vocabulary size
 *    and special-token ids, the routed-expert quant types, ds4's model_summary of the sidecar
 *    (ds4 --inspect summarises the trunk only).
 * 3. Checks of ours over ds4's parsed tables (ds4 itself only checks that each tensor lies
 *    inside the file): every tensor in the file is one ds4 binds, general.architecture, every
 *    tensor's absolute offset a multiple of general.alignment, no two tensors overlapping,
 *    every tensor type of known size, and the file ending where the last tensor's bytes,
 *    padded to the alignment, end. Exit 1 on any.
 */
#include "ds4.c"

static int g_failures = 0;

static void fail_check(const char *what) {
    fprintf(stdout, "  FAIL: %s\n", what);
    g_failures++;
}

static int cmp_tensor_offset(const void *a, const void *b) {
    const ds4_tensor *x = *(const ds4_tensor *const *)a;
    const ds4_tensor *y = *(const ds4_tensor *const *)b;
    return x->abs_offset < y->abs_offset ? -1 : x->abs_offset > y->abs_offset ? 1 : 0;
}

/* Counts distinct non-null tensor pointers in a struct made only of ds4_tensor pointers. */
static uint64_t count_bound(const void *weights, size_t bytes, const ds4_model *m) {
    const ds4_tensor *const *p = (const ds4_tensor *const *)weights;
    const size_t n = bytes / sizeof(*p);
    uint8_t *seen = calloc((size_t)m->n_tensors, 1);
    uint64_t count = 0;
    for (size_t i = 0; i < n; i++) {
        if (!p[i]) continue;
        const uint64_t idx = (uint64_t)(p[i] - m->tensors);
        if (idx < m->n_tensors && !seen[idx]) {
            seen[idx] = 1;
            count++;
        }
    }
    free(seen);
    return count;
}

static void check_file(const ds4_model *m, const char *label, const char *want_arch) {
    ds4_str arch = {0};
    model_get_string(m, "general.architecture", &arch);
    printf("%s: general.architecture=%.*s, GGUF v%u, %" PRIu64 " metadata keys, %" PRIu64
           " tensors, alignment %" PRIu64 ", data at %" PRIu64 ", file %" PRIu64 " bytes\n",
           label, (int)arch.len, arch.ptr ? arch.ptr : "", m->version, m->n_kv, m->n_tensors,
           m->alignment, m->tensor_data_pos, m->size);
    if (!ds4_streq(arch, want_arch)) fail_check("general.architecture differs");

    const ds4_tensor **order = calloc((size_t)m->n_tensors, sizeof(*order));
    uint64_t misaligned = 0, unknown = 0;
    for (uint64_t i = 0; i < m->n_tensors; i++) {
        order[i] = &m->tensors[i];
        if (m->tensors[i].abs_offset % m->alignment != 0) misaligned++;
        if (m->tensors[i].bytes == 0) unknown++;
    }
    qsort(order, (size_t)m->n_tensors, sizeof(*order), cmp_tensor_offset);
    uint64_t overlaps = 0, end = m->tensor_data_pos;
    for (uint64_t i = 0; i < m->n_tensors; i++) {
        if (order[i]->abs_offset < end) overlaps++;
        end = order[i]->abs_offset + order[i]->bytes;
    }
    free(order);
    const uint64_t padded_end = align_up(end, m->alignment);
    printf("%s: offsets not a multiple of %" PRIu64 ": %" PRIu64 "; overlapping tensors: %" PRIu64
           "; tensors of unknown type size: %" PRIu64 "; last tensor ends at %" PRIu64
           " (padded %" PRIu64 ") of %" PRIu64 "\n",
           label, m->alignment, misaligned, overlaps, unknown, end, padded_end, m->size);
    if (misaligned) fail_check("misaligned tensor offsets");
    if (overlaps) fail_check("overlapping tensors");
    if (unknown) fail_check("tensor of a type ds4 cannot size");
    if (m->size != padded_end && m->size != end) fail_check("file size is not where the tensor data ends");
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s TRUNK.gguf [MTP.gguf]\n", argv[0]);
        return 2;
    }
    ds4_engine_options opt;
    memset(&opt, 0, sizeof(opt));
    opt.model_path = argv[1];
    opt.mtp_path = argc > 2 ? argv[2] : NULL;
    opt.backend = DS4_BACKEND_CPU;
    opt.mtp_margin = -1.0f;
    ds4_engine *e = NULL;
    if (ds4_engine_open(&e, &opt) != 0) return 1;

    printf("ds4_engine_open: accepted %s%s%s\n", argv[1], opt.mtp_path ? " + " : "",
           opt.mtp_path ? opt.mtp_path : "");
    printf("trunk: ds4 bound %" PRIu64 " of %" PRIu64 " tensors by name; vocab %d tokens "
           "(bos %d eos %d user %d assistant %d think %d /think %d DSML %d); routed experts "
           "gate/up %s, down %s (layer 0)\n",
           count_bound(&e->weights, sizeof(e->weights), &e->model), e->model.n_tensors,
           e->vocab.n_vocab, e->vocab.bos_id, e->vocab.eos_id, e->vocab.user_id,
           e->vocab.assistant_id, e->vocab.think_start_id, e->vocab.think_end_id,
           e->vocab.dsml_id, tensor_type_name(e->weights.layer[0].ffn_gate_exps->type),
           tensor_type_name(e->weights.layer[0].ffn_down_exps->type));
    if (count_bound(&e->weights, sizeof(e->weights), &e->model) != e->model.n_tensors) {
        fail_check("trunk has tensors ds4 does not bind");
    }
    check_file(&e->model, "trunk", "deepseek4");
    if (e->mtp_ready) {
        printf("mtp: ds4 bound %" PRIu64 " of %" PRIu64 " tensors by name; routed experts "
               "gate/up %s, down %s\n",
               count_bound(&e->mtp_weights, sizeof(e->mtp_weights), &e->mtp_model),
               e->mtp_model.n_tensors, tensor_type_name(e->mtp_weights.block.ffn_gate_exps->type),
               tensor_type_name(e->mtp_weights.block.ffn_down_exps->type));
        if (count_bound(&e->mtp_weights, sizeof(e->mtp_weights), &e->mtp_model) !=
            e->mtp_model.n_tensors) {
            fail_check("sidecar has tensors ds4 does not bind");
        }
        check_file(&e->mtp_model, "mtp", "deepseek4_mtp_support");
        printf("mtp: ds4 model_summary:\n");
        fflush(stdout);
        model_summary(&e->mtp_model);
    }
    fflush(stdout);
    ds4_engine_close(e);
    if (g_failures) {
        printf("driver checks: %d failed\n", g_failures);
        return 1;
    }
    printf("driver checks: all passed\n");
    return 0;
}
