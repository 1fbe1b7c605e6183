/* test_schedule: lr_schedule (llmtrain.h) against transformers' schedulers. Each row of
   tests/fixtures/lr_schedule.txt (dev/gen_lr_schedule_fixtures.py: how each schedule and its arguments map onto
   transformers', and which settings cannot match) gives a schedule name, max_lr, min_lr, warmup, decay_steps,
   a step and the expected rate; the style is lr_style(name), as the trainers get it from --lr-schedule. Every
   row must agree to 1e-6 of max_lr. A name that lr_style refuses is reported as not implemented (a new
   schedule: docs/labs.md, lab 4), and its rows are skipped. */
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"
#include "prepro/tokenizer.h"
#include "train_common.h"
#include "test_util.h"

#include <setjmp.h>

static jmp_buf refused;
static void on_refused(void) { longjmp(refused, 1); }

/* lr_style(name), or -1 where it refuses the name (its die() comes back here instead of exiting) */
static int style_of(const char *name) {
    if (setjmp(refused)) { trainer_on_die = NULL; return -1; }
    trainer_on_die = on_refused;
    int style = lr_style(name);
    trainer_on_die = NULL;
    return style;
}

typedef struct { char name[32]; int style, rows, failed; double worst; } Sched;

int main(void) {
    const char *path = "tests/fixtures/lr_schedule.txt";
    FILE *f = fopen(path, "r");
    if (!f) { fprintf(stderr, "cannot open %s\n", path); return 1; }
    Sched s[16];
    int ns = 0, line = 0;
    char buf[256];
    while (fgets(buf, sizeof(buf), f)) {
        line++;
        if (buf[0] == '#') continue;
        char name[32];
        double max_lr, min_lr, want;
        int warmup, decay, step;
        if (sscanf(buf, "%31s %lf %lf %d %d %d %lf", name, &max_lr, &min_lr, &warmup, &decay, &step, &want) != 7) {
            fprintf(stderr, "%s:%d: not a row: %s", path, line, buf);
            return 1;
        }
        int k = 0;
        while (k < ns && strcmp(s[k].name, name)) k++;
        if (k == ns) {
            if (ns == 16) { fprintf(stderr, "%s:%d: more than 16 schedules\n", path, line); return 1; }
            snprintf(s[k].name, sizeof(s[k].name), "%s", name);
            s[k].style = style_of(name);
            s[k].rows = s[k].failed = 0; s[k].worst = 0.0;
            ns++;
        }
        if (s[k].style < 0) continue;
        float got = lr_schedule(step, (float)max_lr, (float)min_lr, warmup, decay, s[k].style);
        double err = fabs(got - want) / max_lr;
        s[k].rows++; checks++;
        if (err > s[k].worst) s[k].worst = err;
        if (err > 1e-6) {
            if (s[k].failed++ < 5)
                failf("%s max_lr %g min_lr %g warmup %d decay_steps %d step %d: lr %.9g, transformers %.9g",
                      name, max_lr, min_lr, warmup, decay, step, got, want);
        }
    }
    fclose(f);
    int failed = 0;
    for (int k = 0; k < ns; k++) {
        if (s[k].style < 0) { printf("%s: not implemented (labs.md lab 4)\n", s[k].name); continue; }
        printf("%-9s %3d rows, worst |lr - transformers| / max_lr %.1e  %s\n", s[k].name, s[k].rows, s[k].worst,
               s[k].failed ? "FAIL" : "ok");
        failed += s[k].failed;
    }
    printf("%d rows checked, %d failed\n", checks, failed);
    return failed ? 1 : 0;
}
