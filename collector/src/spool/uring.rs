//! The spool's io_uring path: a record's write linked to an `fdatasync`,
//! submitted together and waited for with one `io_uring_enter`, where the
//! standard path makes two system calls (`pwrite`, `fdatasync`).
//!
//! It is behind `--spool-io uring` and off by default: at four seals a
//! second the fsync dominates and the saved system call is not measurable
//! (benches/benches/spool.rs; figures in the README).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, squeue, types};

/// Completions are told apart by these.
const WRITE: u64 = 1;
const SYNC: u64 = 2;

pub(crate) struct UringWriter {
    ring: IoUring,
}

impl UringWriter {
    pub(crate) fn new() -> io::Result<UringWriter> {
        // Two entries per submission; a little room to spare.
        Ok(UringWriter { ring: IoUring::new(8)? })
    }

    /// Writes all of `bytes` at `offset`, then syncs the file's data. A short
    /// write cancels its linked sync and is continued with the rest.
    pub(crate) fn write_all_and_sync(&mut self, file: &File, mut offset: u64, mut bytes: &[u8]) -> io::Result<()> {
        let fd = types::Fd(file.as_raw_fd());
        while !bytes.is_empty() {
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            let write = opcode::Write::new(fd, bytes.as_ptr(), len)
                .offset(offset)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(WRITE);
            let sync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(SYNC);
            // SAFETY: the entries point into `bytes` and at `file`, both
            // borrowed for this whole call, and the call does not return
            // before both entries have completed (`submit_and_wait(2)` and
            // the completions drained below), so the kernel never touches
            // them after the borrow ends. The ring has 8 entries and holds
            // none when this starts, so the two pushes cannot fail.
            #[allow(unsafe_code)]
            unsafe {
                let mut submission = self.ring.submission();
                submission.push(&write).map_err(|_| io::Error::other("io_uring submission queue full"))?;
                submission.push(&sync).map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
            self.ring.submit_and_wait(2)?;
            let (mut written, mut synced) = (None, None);
            for completion in self.ring.completion() {
                match completion.user_data() {
                    WRITE => written = Some(completion.result()),
                    SYNC => synced = Some(completion.result()),
                    _ => {}
                }
            }
            let written = written.ok_or_else(|| io::Error::other("io_uring write did not complete"))?;
            if written < 0 {
                return Err(io::Error::from_raw_os_error(-written));
            }
            let n_written = written as usize;
            if n_written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[n_written..];
            offset += n_written as u64;
            if bytes.is_empty() {
                let synced = synced.ok_or_else(|| io::Error::other("io_uring fsync did not complete"))?;
                if synced < 0 {
                    return Err(io::Error::from_raw_os_error(-synced));
                }
            }
        }
        Ok(())
    }
}
