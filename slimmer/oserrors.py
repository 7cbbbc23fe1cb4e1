"""An `OSError` as one line for the user: the path, what the system said, and what to do.

The CLI turns every OSError that reaches it into this line and exit code `EXIT_CODE`, so a full
disk, a read-only file system or a file where a folder should be never ends in a traceback.
"""

from __future__ import annotations

import errno

from slimmer.errors import FileSystemError

EXIT_CODE = FileSystemError.exit_code

_ADVICE = {
    errno.ENOSPC: "the file system is full: free space on it and run again"
    " (a staged run can be restored with 'slimmer undo ROOT')",
    errno.EDQUOT: "the disk quota is exhausted: free space and run again",
    errno.EROFS: "the file system is read-only: slimmer needs to write under ROOT;"
    " remount it read-write or slim a writable copy",
    errno.EACCES: "permission denied: run as a user who may write there, or fix its permissions",
    errno.EPERM: "operation not permitted: run as a user who may change it (an immutable file? chattr -i)",
    errno.ENOTDIR: "a file stands where a folder is expected (ROOT/.slimmer as a file?): move it away",
    errno.EEXIST: "something already exists there (ROOT/.slimmer as a file?): move it away",
    errno.EISDIR: "a folder stands where a file is expected: move it away",
    errno.ELOOP: "a symbolic link stands where slimmer will not follow one: replace it with a real file or folder",
    errno.ENOENT: "it disappeared while slimmer ran: is something else changing ROOT?",
    errno.EIO: "an I/O error: check the disk",
    errno.EMFILE: "too many open files: raise 'ulimit -n'",
    errno.ENAMETOOLONG: "the name is too long for this file system",
}


def describe(exc: OSError) -> str:
    """`PATH: reason: what to do` in one line."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = ""
    if exc.filename is not None:
        where = str(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {exc.filename2}"
        where += ": "
    advice = _ADVICE.get(exc.errno or 0, "check that path and run again")
    return " ".join(f"{where}{reason}: {advice}".split())
