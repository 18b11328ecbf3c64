/* CPUID mask for `fsac bench isa`: make this process see an older Intel CPU.

   LD_PRELOAD=cpuid_mask.so FSAC_CPUID_CAP=AVX2|AVX2_VNNI|AVX512_CORE_VNNI python ...

   The constructor turns on CPUID faulting for the process (arch_prctl(ARCH_SET_CPUID, 0),
   Linux >= 4.12 on CPUs that support it: /proc/cpuinfo flag "cpuid_fault"). Every CPUID
   instruction then raises SIGSEGV; the handler runs the real CPUID with faulting briefly
   off, clears the feature bits the cap does not have (AVX-512, VNNI, AVX-VNNI, BF16, FP16,
   AMX) and steps over the instruction. Every library that asks CPUID which kernels to use
   (ONNX Runtime's MLAS, oneDNN, OpenVINO's own JIT kernels) then picks those of the older
   CPU. The setting is per thread and inherited by threads created later, so it must be
   loaded before any library starts threads: LD_PRELOAD does that. Same caches, clocks and
   memory as the real CPU: an emulation, for ratios. fsac_cpuid_cap() returns the cap in
   force (0: none), so the process can report that the mask took effect. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static int cap = 0; /* 1 AVX2, 2 AVX2_VNNI, 3 AVX512_CORE_VNNI */

int fsac_cpuid_cap(void) { return cap; }

static long set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static void mask(unsigned leaf, unsigned sub, unsigned *a, unsigned *b, unsigned *c, unsigned *d) {
    if (cap == 0) return;
    if (leaf == 7 && sub == 0) {
        unsigned amx = (1u << 22) | (1u << 24) | (1u << 25);
        *d &= ~(amx | (1u << 23));                   /* AMX, AVX512_FP16 */
        if (cap <= 2) {
            *b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
            *c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
            *d &= ~((1u << 2) | (1u << 3) | (1u << 8));
        }
    } else if (leaf == 7 && sub == 1) {
        *a &= ~((1u << 5) | (1u << 21));              /* AVX512_BF16, AMX_FP16 */
        if (cap != 2) *a &= ~(1u << 4);               /* AVX_VNNI */
    }
}

static void on_segv(int sig, siginfo_t *si, void *uctx) {
    ucontext_t *uc = (ucontext_t *)uctx;
    greg_t *g = uc->uc_mcontext.gregs;
    unsigned char *ip = (unsigned char *)g[REG_RIP];
    if (ip[0] == 0x0f && ip[1] == 0xa2) {
        unsigned a, b, c, d, leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX];
        set_cpuid(1);
        __cpuid_count(leaf, sub, a, b, c, d);
        set_cpuid(0);
        mask(leaf, sub, &a, &b, &c, &d);
        g[REG_RAX] = a; g[REG_RBX] = b; g[REG_RCX] = c; g[REG_RDX] = d;
        g[REG_RIP] += 2;
        return;
    }
    signal(SIGSEGV, SIG_DFL); /* a real fault: let it happen again, uncaught */
}

__attribute__((constructor)) static void init(void) {
    const char *v = getenv("FSAC_CPUID_CAP");
    if (!v || !*v) return;
    if (!strcmp(v, "AVX2")) cap = 1;
    else if (!strcmp(v, "AVX2_VNNI")) cap = 2;
    else if (!strcmp(v, "AVX512_CORE_VNNI")) cap = 3;
    else { fprintf(stderr, "FSAC_CPUID_CAP: unknown cap %s\n", v); _exit(2); }
    int wanted = cap;
    cap = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    if (set_cpuid(0) != 0) { perror("FSAC_CPUID_CAP: arch_prctl(ARCH_SET_CPUID) (no CPUID faulting here)"); _exit(3); }
    cap = wanted;
}
