// fn-trace SYMBOLS OUT BINARY -- COMMAND [ARG...]
//
// Runs COMMAND under ptrace and writes to OUT, in the order they are first called, the
// functions of BINARY that run in COMMAND, its children and its re-execs of BINARY.
// SYMBOLS lists BINARY's functions as "hex-offset name" lines sorted by offset (nm output).
// A breakpoint (int3) is put at the entry of every function of each process image of BINARY;
// a hit is recorded, the original byte put back and the function resumed, so each function
// traps at most once per process. Processes that exec anything else are let go.
// Used by hot-text.sh to lay out skiff-runc's code (see runtime/build.rs).
#define _GNU_SOURCE
#include <elf.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

struct sym { unsigned long off; char *name; unsigned char orig; int hit; };
static struct sym *syms;
static int nsyms;
static struct stat target;
static unsigned long entry_off;

// The load address of BINARY in each traced process (0: not BINARY).
#define MAXPROCS 65536
static int proc_pid[MAXPROCS];
static unsigned long proc_base[MAXPROCS];
static int nprocs;

static unsigned long *base_of(int pid) {
  for (int i = 0; i < nprocs; i++)
    if (proc_pid[i] == pid) return &proc_base[i];
  if (nprocs == MAXPROCS) { fprintf(stderr, "fn-trace: too many processes\n"); exit(1); }
  proc_pid[nprocs] = pid;
  proc_base[nprocs] = 0;
  return &proc_base[nprocs++];
}

static int find(unsigned long off) {
  int lo = 0, hi = nsyms - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (syms[mid].off == off) return mid;
    if (syms[mid].off < off) lo = mid + 1; else hi = mid - 1;
  }
  return -1;
}

static int open_mem(int pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/mem", pid);
  return open(path, O_RDWR);
}

// After an exec: if the new image is BINARY, find its load address and arm every function.
static void arm(int pid) {
  char path[64];
  struct stat st;
  unsigned long *base = base_of(pid);
  *base = 0;
  snprintf(path, sizeof path, "/proc/%d/exe", pid);
  if (stat(path, &st) || st.st_ino != target.st_ino || st.st_dev != target.st_dev) {
    ptrace(PTRACE_DETACH, pid, 0, 0);
    return;
  }
  snprintf(path, sizeof path, "/proc/%d/auxv", pid);
  unsigned long auxv[512];
  int fd = open(path, O_RDONLY);
  long n = read(fd, auxv, sizeof auxv);
  close(fd);
  for (long i = 0; (i + 1) * 16 <= n; i++)
    if (auxv[2 * i] == AT_ENTRY) *base = auxv[2 * i + 1] - entry_off;
  int mem = open_mem(pid);
  unsigned char int3 = 0xcc;
  for (int i = 0; i < nsyms; i++) {
    if (syms[i].hit) continue;
    if (pread(mem, &syms[i].orig, 1, *base + syms[i].off) != 1 ||
        pwrite(mem, &int3, 1, *base + syms[i].off) != 1) {
      fprintf(stderr, "fn-trace: cannot arm %s in %d\n", syms[i].name, pid);
      exit(1);
    }
  }
  close(mem);
}

int main(int argc, char **argv) {
  if (argc < 6 || strcmp(argv[4], "--")) {
    fprintf(stderr, "usage: fn-trace SYMBOLS OUT BINARY -- COMMAND [ARG...]\n");
    return 2;
  }
  FILE *in = fopen(argv[1], "r");
  FILE *out = fopen(argv[2], "w");
  if (!in || !out || stat(argv[3], &target)) { perror("fn-trace"); return 1; }
  char line[8192];
  int cap = 0;
  while (fgets(line, sizeof line, in)) {
    char *name = strchr(line, ' ');
    if (!name) continue;
    *name++ = 0;
    name[strcspn(name, "\n")] = 0;
    unsigned long off = strtoul(line, 0, 16);
    if (nsyms && syms[nsyms - 1].off == off) continue;  // aliases: the first name stands for all
    if (nsyms == cap) syms = realloc(syms, (cap = cap ? 2 * cap : 4096) * sizeof *syms);
    syms[nsyms++] = (struct sym){off, strdup(name), 0, 0};
  }
  Elf64_Ehdr eh;
  int fd = open(argv[3], O_RDONLY);
  if (fd < 0 || read(fd, &eh, sizeof eh) != sizeof eh) { perror(argv[3]); return 1; }
  close(fd);
  entry_off = eh.e_entry;

  pid_t child = fork();
  if (!child) {
    ptrace(PTRACE_TRACEME, 0, 0, 0);
    raise(SIGSTOP);
    execv(argv[5], &argv[5]);
    _exit(127);
  }
  int status, rc = 1;
  waitpid(child, &status, 0);
  ptrace(PTRACE_SETOPTIONS, child, 0,
         PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC |
             PTRACE_O_EXITKILL);
  ptrace(PTRACE_CONT, child, 0, 0);
  for (;;) {
    int pid = waitpid(-1, &status, __WALL);
    if (pid < 0) break;
    if (WIFEXITED(status) || WIFSIGNALED(status)) {
      if (pid == child) rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      continue;
    }
    int sig = WSTOPSIG(status), event = status >> 16, inject = 0;
    if (event == PTRACE_EVENT_EXEC) {
      arm(pid);
      if (!*base_of(pid)) continue;  // detached
    } else if (event == PTRACE_EVENT_FORK || event == PTRACE_EVENT_VFORK ||
               event == PTRACE_EVENT_CLONE) {
      unsigned long new_pid;
      ptrace(PTRACE_GETEVENTMSG, pid, 0, &new_pid);
      unsigned long base = *base_of(pid);
      *base_of((int)new_pid) = base;
    } else if (event) {
    } else if (sig == SIGTRAP) {
      struct user_regs_struct regs;
      ptrace(PTRACE_GETREGS, pid, 0, &regs);
      unsigned long base = *base_of(pid);
      int i = base ? find(regs.rip - 1 - base) : -1;
      if (i >= 0) {
        if (!syms[i].hit) {
          syms[i].hit = 1;
          fprintf(out, "%s\n", syms[i].name);
        }
        int mem = open_mem(pid);
        if (pwrite(mem, &syms[i].orig, 1, regs.rip - 1) != 1) perror("fn-trace: disarm");
        close(mem);
        regs.rip--;
        ptrace(PTRACE_SETREGS, pid, 0, &regs);
      } else {
        inject = sig;
      }
    } else if (sig != SIGSTOP) {
      inject = sig;
    }
    ptrace(PTRACE_CONT, pid, 0, inject);
  }
  fclose(out);
  return rc;
}
