//! The file store's write-ahead log: every batch, in commit order, as one checksummed record.
//!
//! Why: a durable redb commit rewrites every B-tree page the batch touched and then fsyncs them
//! (measured: ~90 pages, ~360 KiB, ~1.1 ms for a batch of 31 random-key writes), while appending
//! the batch itself (~10 KiB) and fsyncing it costs ~0.1–0.2 ms. So a synced commit appends the
//! batch here and fsyncs this file only; redb applies it without an fsync, and a periodic
//! *checkpoint* (one durable redb commit, then truncating this log) keeps the log short. redb
//! stays the store of record; this file only holds the batches since the last checkpoint.
//!
//! Layout: a 16-byte header (`TRINEWAL` · generation: u64 LE), then records
//! `len: u32 LE` · `crc32(generation · payload): u32 LE` · payload. Payload: ops, each
//! `tag: u8` (1 = put, 2 = delete) · `space: u8` · `key len: u32 LE` · key ·
//! (put only) `value len: u32 LE` · value.
//!
//! The file is preallocated (written with zeros, a chunk at a time, ahead of the records) and
//! records are written in place, so the fsync of an append does not also have to persist a new
//! file size or newly allocated blocks (measured on this disk: 84 µs instead of 136 µs). Emptying the log after a checkpoint writes a
//! new generation into the header; records of older generations still in the file fail their
//! checksum (it covers the generation), so replay stops at the first of them.
//!
//! Recovery replays the records, in order, on top of redb's last durable state. Replaying a
//! batch redb already holds is harmless: puts and deletes are absolute, so applying any prefix of
//! the log twice ends in the same state. Reading stops at the first short or corrupt record — a
//! torn append that was never acknowledged (its fsync had not returned).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{Batch, BatchOp, Space, StoreError};

const PUT: u8 = 1;
const DELETE: u8 = 2;
const MAGIC: &[u8; 8] = b"TRINEWAL";
const HEADER: u64 = 16;

/// The open log file.
pub struct Wal {
    file: File,
    path: PathBuf,
    generation: u64,
    /// Where the next record goes.
    pos: u64,
    /// Bytes of the file already written (zeros ahead of `pos`).
    allocated: u64,
    /// How much to preallocate at a time.
    chunk: u64,
    /// Bytes of records since the last truncation.
    pub bytes: u64,
}

impl Wal {
    /// Opens (or creates) the log at `path`, preallocating `chunk` bytes at a time, and returns
    /// the complete records of its current generation.
    pub fn open(path: &Path, chunk: u64) -> Result<(Wal, Vec<Batch>), StoreError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let generation = match data.get(..HEADER as usize) {
            Some(h) if &h[..8] == MAGIC => {
                u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"))
            }
            _ => 0,
        };
        let (batches, valid) = if generation == 0 {
            (Vec::new(), HEADER as usize)
        } else {
            decode_records(&data, generation)?
        };
        let mut wal = Wal {
            file,
            path: path.to_path_buf(),
            generation,
            pos: valid as u64,
            allocated: data.len() as u64,
            chunk: chunk.max(HEADER),
            bytes: valid as u64 - HEADER,
        };
        if generation == 0 {
            wal.allocated = 0;
            wal.preallocate(HEADER)?;
            wal.truncate()?;
        }
        Ok((wal, batches))
    }

    /// Writes zeros from the end of the allocated part to past `upto`, a chunk at a time, so
    /// records land on allocated blocks.
    fn preallocate(&mut self, upto: u64) -> Result<(), StoreError> {
        if upto <= self.allocated {
            return Ok(());
        }
        let target = upto.div_ceil(self.chunk) * self.chunk;
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.allocated;
        while at < target {
            let n = zeros.len().min((target - at) as usize);
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.allocated = target;
        Ok(())
    }

    /// Appends one batch (not yet durable; see [`Wal::sync`]).
    pub fn append(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let mut payload = Vec::with_capacity(64 * batch.ops.len());
        for op in &batch.ops {
            match op {
                BatchOp::Put { space, key, value } => {
                    payload.push(PUT);
                    payload.push(space_code(*space));
                    put_bytes(&mut payload, key)?;
                    put_bytes(&mut payload, value)?;
                }
                BatchOp::Delete { space, key } => {
                    payload.push(DELETE);
                    payload.push(space_code(*space));
                    put_bytes(&mut payload, key)?;
                }
            }
        }
        let len = u32::try_from(payload.len())
            .map_err(|_| StoreError::Engine("batch larger than 4 GiB".into()))?;
        let mut record = Vec::with_capacity(8 + payload.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&checksum(self.generation, &payload).to_le_bytes());
        record.extend_from_slice(&payload);
        self.preallocate(self.pos + record.len() as u64)?;
        self.file.write_all_at(&record, self.pos)?;
        self.pos += record.len() as u64;
        self.bytes += record.len() as u64;
        Ok(())
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.file.sync_data()?;
        Ok(())
    }

    /// Empties the log (after a checkpoint made its batches durable in redb): a new generation
    /// in the header invalidates every record in the file.
    pub fn truncate(&mut self) -> Result<(), StoreError> {
        self.generation += 1;
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&self.generation.to_le_bytes());
        self.file.write_all_at(&header, 0)?;
        self.file.sync_data()?;
        self.pos = HEADER;
        self.bytes = 0;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Record checksum: covers the generation, so records of an older generation never match.
fn checksum(generation: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&generation.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(b.len())
        .map_err(|_| StoreError::Engine("key or value larger than 4 GiB".into()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(b);
    Ok(())
}

fn space_code(space: Space) -> u8 {
    // `Space` is fieldless and `ALL` lists every variant in declaration order.
    space as u8
}

fn space_of(code: u8) -> Option<Space> {
    Space::ALL.get(code as usize).copied()
}

/// Decodes the complete records of `generation` after the header; returns them and the end of
/// the valid prefix.
fn decode_records(data: &[u8], generation: u64) -> Result<(Vec<Batch>, usize), StoreError> {
    let mut batches = Vec::new();
    let mut at = HEADER as usize;
    while data.len() - at >= 8 {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
        let Some(payload) = data.get(at + 8..at + 8 + len) else {
            break;
        };
        if len == 0 || checksum(generation, payload) != crc {
            break;
        }
        let Some(batch) = decode_payload(payload) else {
            // A record with a valid checksum that does not decode was written by a different
            // version: refuse to guess.
            return Err(StoreError::Corrupt(format!(
                "write-ahead log record at byte {at} does not decode"
            )));
        };
        batches.push(batch);
        at += 8 + len;
    }
    Ok((batches, at))
}

fn decode_payload(p: &[u8]) -> Option<Batch> {
    let mut batch = Batch::new();
    let mut at = 0;
    let take = |at: &mut usize| -> Option<Vec<u8>> {
        let len = u32::from_le_bytes(p.get(*at..*at + 4)?.try_into().ok()?) as usize;
        let b = p.get(*at + 4..*at + 4 + len)?.to_vec();
        *at += 4 + len;
        Some(b)
    };
    while at < p.len() {
        let tag = p[at];
        let space = space_of(*p.get(at + 1)?)?;
        at += 2;
        let key = take(&mut at)?;
        match tag {
            PUT => {
                let value = take(&mut at)?;
                batch.put(space, key, value);
            }
            DELETE => batch.delete(space, key),
            _ => return None,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_stale_or_torn_records_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let mut b1 = Batch::new();
        b1.put(Space::StateData, b"k".to_vec(), b"v".to_vec());
        b1.delete(Space::Meta, b"x".to_vec());
        let mut b2 = Batch::new();
        b2.put(Space::StreamGroups, vec![0, 255], vec![]);
        {
            let (mut wal, old) = Wal::open(&path, 64 * 1024).unwrap();
            assert!(old.is_empty());
            wal.append(&b1).unwrap();
            wal.append(&b2).unwrap();
            wal.sync().unwrap();
        }
        let (mut wal, batches) = Wal::open(&path, 64 * 1024).unwrap();
        assert_eq!(batches, vec![b1.clone(), b2.clone()]);
        // A new generation: the old records are still in the file but no longer valid.
        wal.truncate().unwrap();
        wal.append(&b2).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (wal, batches) = Wal::open(&path, 64 * 1024).unwrap();
        assert_eq!(batches, vec![b2.clone()]);
        // A flipped byte inside the last record stops the replay before it.
        let end = wal.pos as usize;
        drop(wal);
        let mut data = std::fs::read(&path).unwrap();
        data[end - 1] ^= 0xFF;
        std::fs::write(&path, &data).unwrap();
        let (_, batches) = Wal::open(&path, 64 * 1024).unwrap();
        assert!(batches.is_empty());
    }
}
