//! Fuzzes the collector's spool reader: the input is written as a segment
//! file and the spool opened on it (`Spool::open`), as a restart after a
//! crash or a damaged disk would. Opening succeeds or returns an error,
//! every frame it reports reads back, a second open finds the same frames
//! (recovery is idempotent), and the spool still appends and acknowledges.
#![no_main]

use bytes::Bytes;
use edgetally_collector::SpoolIo;
use edgetally_collector::spool::{Pending, Spool, Through};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("00000000000000000001.spool"), data).expect("write the segment");
    let Ok((spool, recovery)) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std) else { return };
    let pending: Vec<Pending> = spool.pending().copied().collect();
    assert_eq!(pending.len() as u64, recovery.frames);
    let frames: Vec<Bytes> =
        pending.iter().map(|pending| spool.read(pending).expect("a reported frame reads back")).collect();
    for (pending, frame) in pending.iter().zip(&frames) {
        assert_eq!(frame.len(), pending.frame_len as usize);
    }
    drop(spool);

    let (mut spool, again) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).expect("a recovered spool reopens");
    assert_eq!(again.frames, recovery.frames);
    // A segment without frames is deleted by the first open, and with it
    // what its records said about the journal (the journal segments they
    // covered were deleted by that start, and the rows their rows-only
    // seals covered were skipped and noted in the journal).
    let through = if recovery.frames > 0 { recovery.through } else { Through::default() };
    assert_eq!(again.through, through);
    assert_eq!(again.torn, 0, "a torn tail is truncated by the first open");
    let reread: Vec<Bytes> = spool.pending().map(|pending| spool.read(pending).expect("reads back again")).collect();
    assert_eq!(reread, frames);

    // The recovered spool keeps working: a new record lands after the old
    // ones, and acknowledging everything empties it.
    let mut frame = vec![0u8; 40];
    frame[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    frame[20..28].copy_from_slice(&1u64.to_le_bytes());
    let appended =
        spool.append(&[Bytes::from(frame.clone())], Through::all(1), 1).expect("append to a recovered spool");
    assert_eq!(spool.read(&appended[0]).expect("the new frame reads back"), frame);
    let ids: Vec<(u64, u64)> = spool.pending().map(|pending| (pending.epoch, pending.sequence)).collect();
    for (epoch, sequence) in ids {
        spool.ack(epoch, sequence);
    }
    assert_eq!(spool.pending().len(), 0);
});
