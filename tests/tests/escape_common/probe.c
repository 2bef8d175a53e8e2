/* The escape probe: one attempt per subcommand, run as root inside a
 * container. Prints "RESULT: ESCAPED <what>" (the attack worked) or
 * "RESULT: BLOCKED <why>" and exits 0 / 1. Built static by the escape
 * suite (tests/tests/escape_common/mod.rs). Nothing here changes the host
 * when it succeeds: sockets, keys, maps and traces are released at once,
 * no byte is written through a runtime binary. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

static int escaped(const char *what) { printf("RESULT: ESCAPED %s\n", what); fflush(stdout); return 0; }
static int blocked(const char *what, int err) {
    printf("RESULT: BLOCKED %s: %s\n", what, strerror(err)); fflush(stdout); return 1;
}

static int rawsock(void) {
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    if (fd >= 0) { close(fd); return escaped("socket(AF_INET, SOCK_RAW, ICMP)"); }
    int e1 = errno;
    fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (fd >= 0) { close(fd); return escaped("socket(AF_PACKET, SOCK_RAW)"); }
    (void)e1;
    return blocked("raw ICMP and AF_PACKET sockets", errno);
}

static int keys(void) {
    long id = syscall(SYS_add_key, "user", "husk-escape", "x", 1, -2 /* KEY_SPEC_PROCESS_KEYRING */);
    if (id >= 0) return escaped("add_key into the process keyring");
    int e = errno;
    long r = syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* SESSION */, 0);
    if (r >= 0) return escaped("keyctl(KEYCTL_GET_KEYRING_ID)");
    (void)e;
    return blocked("add_key and keyctl", errno);
}

static int bpf(void) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    long fd = syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
    if (fd >= 0) { close(fd); return escaped("bpf(BPF_MAP_CREATE)"); }
    return blocked("bpf(BPF_MAP_CREATE)", errno);
}

static int do_ptrace(void) {
    pid_t child = fork();
    if (child == 0) { pause(); _exit(0); }
    usleep(50000);
    long r = ptrace(PTRACE_ATTACH, child, 0, 0);
    int e = errno;
    if (r == 0) { waitpid(child, 0, 0); ptrace(PTRACE_DETACH, child, 0, 0); }
    kill(child, SIGKILL);
    waitpid(child, 0, 0);
    if (r == 0) return escaped("ptrace(PTRACE_ATTACH) of another process");
    return blocked("ptrace(PTRACE_ATTACH)", e);
}

static int namespaces(void) {
    static const struct { int flag; const char *name; } ns[] = {
        {CLONE_NEWUSER, "user"}, {CLONE_NEWNS, "mount"}, {CLONE_NEWNET, "net"},
        {CLONE_NEWPID, "pid"}, {CLONE_NEWUTS, "uts"}, {CLONE_NEWIPC, "ipc"},
        {CLONE_NEWCGROUP, "cgroup"},
    };
    char what[64];
    int last = 0;
    for (unsigned i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        pid_t c = fork();
        if (c == 0) _exit(unshare(ns[i].flag) == 0 ? 0 : errno);
        int st = 0;
        waitpid(c, &st, 0);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
            snprintf(what, sizeof what, "unshare(CLONE_NEW%s)", ns[i].name);
            return escaped(what);
        }
        last = WEXITSTATUS(st);
        /* clone with the flag, the other way in */
        long r = syscall(SYS_clone, ns[i].flag | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) _exit(0);
        if (r > 0) {
            waitpid(r, 0, 0);
            snprintf(what, sizeof what, "clone(CLONE_NEW%s)", ns[i].name);
            return escaped(what);
        }
    }
    return blocked("unshare and clone of every namespace", last);
}

static int module(void) {
    int fd = open("/probe", O_RDONLY | O_CLOEXEC);
    long r = syscall(SYS_finit_module, fd, "", 0);
    int e = errno;
    if (r == 0) return escaped("finit_module loaded a module");
    if (e == EPERM || e == ENOSYS)
        return blocked("finit_module", e);
    /* Past the permission check: the kernel looked at the module. */
    printf("finit_module got past the permission check (%s)\n", strerror(e));
    return escaped("finit_module permitted (CAP_SYS_MODULE)");
}

static int fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return blocked("opendir /proc/self/fd", errno);
    int own = dirfd(d), found = 0;
    struct dirent *e;
    char path[64], target[512];
    while ((e = readdir(d))) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd <= 2 || fd == own) continue;
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, target, sizeof target - 1);
        target[n > 0 ? n : 0] = 0;
        printf("leaked fd %d -> %s\n", fd, target);
        found++;
    }
    closedir(d);
    if (found) return escaped("descriptors beyond stdio reached the container");
    printf("RESULT: BLOCKED only stdio is open\n");
    return 1;
}

static int memhog(long mib) {
    long done = 0;
    for (; done < mib; done += 16) {
        char *p = malloc(16 << 20);
        if (!p) return blocked("malloc", errno);
        memset(p, 1, 16 << 20);
        if (done % 256 == 0) { printf("allocated %ld MiB\n", done); fflush(stdout); }
    }
    char what[64];
    snprintf(what, sizeof what, "allocated and touched %ld MiB", done);
    return escaped(what);
}

/* Forks n children that wait; counts how many the kernel allowed. */
static int forkbomb(int n) {
    pid_t *kids = calloc(n, sizeof *kids);
    int made = 0, err = 0;
    for (; made < n; made++) {
        pid_t c = fork();
        if (c == 0) { pause(); _exit(0); }
        if (c < 0) { err = errno; break; }
        kids[made] = c;
    }
    for (int i = 0; i < made; i++) kill(kids[i], SIGKILL);
    for (int i = 0; i < made; i++) waitpid(kids[i], 0, 0);
    char what[96];
    if (made == n) {
        snprintf(what, sizeof what, "%d processes forked, no limit hit", made);
        return escaped(what);
    }
    snprintf(what, sizeof what, "fork stopped after %d processes", made);
    return blocked(what, err);
}

/* Why a setuid-root binary did not give root: every reason that holds. */
static int euid(const char *self) {
    int e = (int)geteuid();
    printf("euid %d\n", e);
    if (e == 0) return escaped("a setuid binary ran as root");
    char why[512] = "";
    struct stat st;
    if (stat(self, &st) == 0 && st.st_uid != 0) {
        snprintf(why + strlen(why), sizeof why - strlen(why),
                 " its owner is uid %d here (host root is not mapped in this user namespace);",
                 (int)st.st_uid);
    }
    struct statvfs vfs;
    if (statvfs(self, &vfs) == 0 && (vfs.f_flag & ST_NOSUID))
        snprintf(why + strlen(why), sizeof why - strlen(why), " its filesystem is mounted nosuid;");
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "NoNewPrivs:\t1", 13))
            snprintf(why + strlen(why), sizeof why - strlen(why), " no_new_privs is set;");
    if (f) fclose(f);
    if (!why[0]) {
        /* The bit was there (checked by `as` before the exec) and nothing
         * explains it: no verdict, the test must look. */
        printf("the setuid bit gave no privilege and no reason was found (euid %d)\n", e);
        return 2;
    }
    printf("RESULT: BLOCKED the setuid bit gave no privilege (euid %d):%s\n", e, why);
    return 1;
}

/* Drops to `uid` and execs argv (a setuid-root binary): no verdict if the
 * image lost the setuid bit or the root owner, since then the attempt
 * proves nothing. */
static int as(int uid, char **argv) {
    struct stat st;
    if (stat(argv[0], &st)) { perror(argv[0]); return 2; }
    printf("%s: mode %o, owner uid %d\n", argv[0], (unsigned)st.st_mode & 07777, (int)st.st_uid);
    if (!(st.st_mode & S_ISUID)) {
        printf("%s has no setuid bit: the image lost it, the attempt would prove nothing\n", argv[0]);
        return 2;
    }
    if (setgroups(0, 0) || setgid(uid) || setuid(uid)) { perror("drop to uid"); return 2; }
    execv(argv[0], argv);
    perror("execv");
    return 2;
}

static int hostproc(const char *marker) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    char path[64], buf[4096];
    int seen = 0;
    while (d && (e = readdir(d))) {
        int pid = atoi(e->d_name);
        if (pid <= 0) continue;
        seen++;
        snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
        for (ssize_t i = 0; i < n; i++) if (!buf[i]) buf[i] = ' ';
        buf[n] = 0;
        if (strstr(buf, marker) && pid != getpid()) {
            int k = kill(pid, 0);
            printf("host process %d visible: %s (signal: %s)\n", pid, buf, k == 0 ? "allowed" : strerror(errno));
            return escaped("a host process is visible");
        }
    }
    printf("RESULT: BLOCKED %d processes visible, none of the host's\n", seen);
    return 1;
}

/* CVE-2019-5736: find a process running a binary from outside the
 * container, take an O_PATH descriptor of its exe, and try to reopen it
 * for writing. Nothing is written. */
static int exewrite(int seconds) {
    time_t end = time(0) + seconds;
    char path[64], target[512], seen[4096] = "";
    int attempts = 0;
    pid_t self = getpid();
    while (time(0) < end) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid <= 0 || pid == self) continue;
            snprintf(path, sizeof path, "/proc/%d/exe", pid);
            ssize_t n = readlink(path, target, sizeof target - 1);
            if (n <= 0) continue;
            target[n] = 0;
            if (strstr(target, "busybox") || strstr(target, "probe")) continue;
            int fd = open(path, O_PATH | O_CLOEXEC);
            if (fd < 0) continue;
            char again[64];
            snprintf(again, sizeof again, "/proc/self/fd/%d", fd);
            for (int i = 0; i < 2000; i++) {
                int w = open(again, O_WRONLY | O_CLOEXEC);
                attempts++;
                if (w >= 0) {
                    close(w); close(fd);
                    printf("opened %s (%s) for writing\n", target, path);
                    return escaped("a runtime binary opened for writing");
                }
                if (errno != ETXTBSY) {
                    if (strlen(seen) + strlen(target) + 40 < sizeof seen) {
                        strcat(seen, " ");
                        strcat(seen, target);
                        strcat(seen, ":");
                        strcat(seen, strerror(errno));
                    }
                    break;
                }
                usleep(100);
            }
            close(fd);
        }
        if (d) closedir(d);
        /* /proc/self/exe too: the container's own program. */
        usleep(2000);
    }
    int w = open("/proc/self/exe", O_WRONLY | O_CLOEXEC);
    if (w >= 0) { close(w); return escaped("/proc/self/exe opened for writing"); }
    printf("RESULT: BLOCKED runtime binaries seen:%s; /proc/self/exe: %s\n",
           seen[0] ? seen : " none", strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, 0, _IOLBF, 0);
    if (argc < 2) { fprintf(stderr, "usage: probe CHECK [ARGS]\n"); return 2; }
    const char *c = argv[1];
    if (!strcmp(c, "rawsock")) return rawsock();
    if (!strcmp(c, "keyctl")) return keys();
    if (!strcmp(c, "bpf")) return bpf();
    if (!strcmp(c, "ptrace")) return do_ptrace();
    if (!strcmp(c, "namespaces")) return namespaces();
    if (!strcmp(c, "module")) return module();
    if (!strcmp(c, "fds")) return fds();
    if (!strcmp(c, "memhog") && argc > 2) return memhog(atol(argv[2]));
    if (!strcmp(c, "euid")) return euid(argv[0]);
    if (!strcmp(c, "forkbomb") && argc > 2) return forkbomb(atoi(argv[2]));
    if (!strcmp(c, "as") && argc > 3) return as(atoi(argv[2]), argv + 3);
    if (!strcmp(c, "hostproc") && argc > 2) return hostproc(argv[2]);
    if (!strcmp(c, "exewrite") && argc > 2) return exewrite(atoi(argv[2]));
    if (!strcmp(c, "hello")) { printf("hello from a compiled C program, uid %d\n", (int)getuid()); return 0; }
    fprintf(stderr, "probe: unknown check %s\n", c);
    return 2;
}
