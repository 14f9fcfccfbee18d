/* glibc's fortified fprintf, which LLVM's libunwind.a (built against glibc) calls for
   its debug messages; musl has no _chk functions. */
#include <stdarg.h>
#include <stdio.h>
int __fprintf_chk(FILE *f, int flag, const char *fmt, ...) {
    (void)flag;
    va_list ap;
    va_start(ap, fmt);
    int n = vfprintf(f, fmt, ap);
    va_end(ap);
    return n;
}
