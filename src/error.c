/*
 * error.c - rbus_last_error_detail: the words behind the last negative
 * errno a public call returned on this thread.
 *
 * Only failure paths come here, so a call that succeeds never touches the
 * thread-local. A detail is either a static text, set by a pointer store
 * (rbus__fail_static, for the receive results an event loop meets all the
 * time), or formatted into this thread's buffer.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* NULL until this thread's first failure: .tbss, no initialiser to relocate. */
_Thread_local const char *rbus__detail;
static _Thread_local char detail_buf[RBUS__DETAIL_CAP];

const char *rbus_last_error_detail(void)
{
    const char *d = rbus__detail;
    return d ? d : "";
}

int rbus__fail(int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    /* vsnprintf cuts a long text and always terminates it. */
    vsnprintf(detail_buf, sizeof detail_buf, fmt, ap);
    va_end(ap);
    rbus__detail = detail_buf;
    return rc;
}

void rbus__fail_prefix(const char *fn)
{
    const char *d = rbus__detail ? rbus__detail : "";
    if (d != detail_buf) {
        snprintf(detail_buf, sizeof detail_buf, "%s: %s", fn, d);
        rbus__detail = detail_buf;
        return;
    }
    /* The text is in the buffer already: move it along rather than format
     * from the buffer into itself. */
    size_t fl = strlen(fn), shift = fl + 2;
    if (shift >= sizeof detail_buf)
        return;
    size_t room = sizeof detail_buf - 1 - shift;
    size_t keep = strnlen(detail_buf, room);
    memmove(detail_buf + shift, detail_buf, keep);
    detail_buf[shift + keep] = '\0';
    memcpy(detail_buf, fn, fl);
    detail_buf[fl] = ':';
    detail_buf[fl + 1] = ' ';
}

const char *rbus__quote(char *dst, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0;
    dst[o++] = '\'';
    /* Room left for the closing quote, "..." and the NUL. */
    const size_t limit = RBUS__QUOTE_CAP - 5;
    for (; s[i]; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[4];
        size_t n;
        if (c == '\'' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            n = 2;
        } else if (c < 0x20 || c >= 0x7f) {
            esc[0] = '\\';
            esc[1] = 'x';
            esc[2] = hex[c >> 4];
            esc[3] = hex[c & 15];
            n = 4;
        } else {
            esc[0] = (char)c;
            n = 1;
        }
        if (o + n > limit)
            break;
        memcpy(dst + o, esc, n);
        o += n;
    }
    dst[o++] = '\'';
    if (s[i]) {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = '\0';
    return dst;
}
