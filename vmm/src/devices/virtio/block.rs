//! virtio-blk on a raw image file: read, write, flush (a real fdatasync), get-id, discard
//! (punches holes) and write-zeroes. Read-only disks offer VIRTIO_BLK_F_RO and fail writes.
//!
//! Every request is decoded from guest-controlled descriptors; malformed ones complete with an
//! error status (or are dropped when not even a status byte can be written) and never stop
//! the device.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::worker::{QueueHandler, Worker};
use super::{
    queue_usable, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    TYPE_BLOCK, VIRTIO_RING_F_EVENT_IDX,
};
use crate::sys::file::{punch_hole, read_exact_at, write_all_at, zero_range};
use crate::warn_ratelimited;

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// Largest data transfer staged through one bounce buffer.
const CHUNK: usize = 128 * 1024;
/// Per-request discard/write-zeroes limits we advertise.
const MAX_DISCARD_SECTORS: u32 = u32::MAX / SECTOR_SIZE as u32;
const MAX_DISCARD_SEG: u32 = 1;

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("Cannot open disk image {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A virtio-blk device.
pub struct Block {
    disk: Arc<File>,
    capacity_sectors: u64,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    acked: u64,
    worker: Option<Worker>,
}

impl Block {
    /// Opens the disk image; `serial` is the ID the guest reads (`/sys/block/vdX/serial`),
    /// the file name when `None`; either is cut to 20 bytes.
    pub fn open(path: &Path, read_only: bool, serial: Option<&str>) -> Result<Self, BlockError> {
        let err = |source| BlockError::Open {
            path: path.display().to_string(),
            source,
        };
        let disk = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(err)?;
        // The end offset, not the metadata length: a block device (`/dev/vdb`, an LVM
        // volume) reports a length of 0 in its metadata.
        let len = std::io::Seek::seek(&mut &disk, std::io::SeekFrom::End(0)).map_err(err)?;
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let name = serial.map(str::to_string).unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let n = name.len().min(id.len());
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        Ok(Block {
            disk: Arc::new(disk),
            capacity_sectors: len / SECTOR_SIZE,
            read_only,
            id,
            acked: 0,
            worker: None,
        })
    }

    fn config(&self) -> Vec<u8> {
        // struct virtio_blk_config up to write_zeroes_may_unmap (offsets per the spec).
        let mut c = vec![0u8; 60];
        c[0..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        c[12..16].copy_from_slice(&(QUEUE_SIZE as u32 - 2).to_le_bytes()); // seg_max
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[44..48].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
        c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        c[52..56].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[56] = 1; // write_zeroes_may_unmap
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        let mut f = VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH;
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut queues = ctx.queues;
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want: 1,
            });
        }
        let handler = BlockHandler {
            queue: queues.remove(0),
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            req: RequestProcessor {
                disk: self.disk.clone(),
                capacity_sectors: self.capacity_sectors,
                read_only: self.read_only,
                id: self.id,
                buf: vec![0; CHUNK],
            },
        };
        self.worker = Some(
            Worker::spawn("virtio-blk", handler, ctx.queue_evts).map_err(ActivateError::Worker)?,
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}

struct BlockHandler {
    queue: Queue,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    req: RequestProcessor,
}

impl QueueHandler for BlockHandler {
    fn process_queue(&mut self, _index: usize) {
        let mem = &self.mem;
        let mut used_any = false;
        loop {
            if !queue_usable("virtio-blk", &self.queue, mem, &self.interrupt) {
                break;
            }
            if let Err(e) = self.queue.disable_notification(mem) {
                warn_ratelimited!("virtio-blk: bad available ring: {e:?}");
                return;
            }
            while let Some(chain) = self.queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let len = self.req.process(mem, chain);
                if let Err(e) = self.queue.add_used(mem, head, len) {
                    warn_ratelimited!("virtio-blk: cannot return descriptor {head}: {e:?}");
                }
                used_any = true;
            }
            match self.queue.enable_notification(mem) {
                Ok(true) => continue, // more arrived meanwhile
                Ok(false) => break,
                Err(e) => {
                    warn_ratelimited!("virtio-blk: bad available ring: {e:?}");
                    break;
                }
            }
        }
        if used_any && self.queue.needs_notification(mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }
}

/// Decodes and executes requests; public for the fuzz target.
pub struct RequestProcessor {
    pub disk: Arc<File>,
    pub capacity_sectors: u64,
    pub read_only: bool,
    pub id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    pub buf: Vec<u8>,
}

impl RequestProcessor {
    /// Runs one request chain; returns the number of bytes written to guest memory.
    pub fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let mut reader = match chain.clone().reader(mem) {
            Ok(r) => r,
            Err(e) => {
                warn_ratelimited!("virtio-blk: bad request chain: {e:?}");
                return 0;
            }
        };
        let mut writer = match chain.writer(mem) {
            Ok(w) => w,
            Err(e) => {
                warn_ratelimited!("virtio-blk: bad request chain: {e:?}");
                return 0;
            }
        };
        let avail = writer.available_bytes();
        if avail == 0 {
            warn_ratelimited!("virtio-blk: request without a status byte dropped");
            return 0;
        }
        let mut status_writer = match writer.split_at(avail - 1) {
            Ok(w) => w,
            Err(e) => {
                warn_ratelimited!("virtio-blk: bad request chain: {e:?}");
                return 0;
            }
        };
        let mut header = [0u8; 16];
        let status = if reader.read_exact(&mut header).is_err() {
            warn_ratelimited!("virtio-blk: request shorter than its header");
            VIRTIO_BLK_S_IOERR
        } else {
            let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let mut sector_bytes = [0u8; 8];
            sector_bytes.copy_from_slice(&header[8..16]);
            let sector = u64::from_le_bytes(sector_bytes);
            self.execute(kind, sector, &mut reader, &mut writer)
        };
        let data_len = writer.bytes_written();
        if status_writer.write_all(&[status as u8]).is_err() {
            return data_len as u32;
        }
        (data_len + 1) as u32
    }

    fn range_ok(&self, sector: u64, bytes: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(bytes)?;
        (end <= self.capacity_sectors * SECTOR_SIZE).then_some(offset)
    }

    fn execute(
        &mut self,
        kind: u32,
        sector: u64,
        reader: &mut virtio_queue::Reader<'_, ()>,
        writer: &mut virtio_queue::Writer<'_, ()>,
    ) -> u32 {
        let is_write = matches!(
            kind,
            VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES
        );
        if is_write && self.read_only {
            return VIRTIO_BLK_S_IOERR;
        }
        // Data must be whole sectors and flow one way: an IN may carry no driver data past
        // its header, an OUT no device-writable buffer besides the status byte (otherwise the
        // guest would believe data was written that never was).
        match kind {
            VIRTIO_BLK_T_IN
                if reader.available_bytes() != 0
                    || writer.available_bytes() as u64 % SECTOR_SIZE != 0 =>
            {
                warn_ratelimited!("virtio-blk: malformed read request");
                return VIRTIO_BLK_S_IOERR;
            }
            VIRTIO_BLK_T_OUT
                if writer.available_bytes() != 0
                    || reader.available_bytes() as u64 % SECTOR_SIZE != 0 =>
            {
                warn_ratelimited!("virtio-blk: malformed write request");
                return VIRTIO_BLK_S_IOERR;
            }
            _ => {}
        }
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = writer.available_bytes() as u64;
                let Some(mut offset) = self.range_ok(sector, len) else {
                    warn_ratelimited!(
                        "virtio-blk: read beyond the end of the disk (sector {sector})"
                    );
                    return VIRTIO_BLK_S_IOERR;
                };
                let mut left = len as usize;
                while left > 0 {
                    let n = left.min(self.buf.len());
                    if read_exact_at(&self.disk, &mut self.buf[..n], offset).is_err()
                        || writer.write_all(&self.buf[..n]).is_err()
                    {
                        return VIRTIO_BLK_S_IOERR;
                    }
                    left -= n;
                    offset += n as u64;
                }
                VIRTIO_BLK_S_OK
            }
            VIRTIO_BLK_T_OUT => {
                let len = reader.available_bytes() as u64;
                let Some(mut offset) = self.range_ok(sector, len) else {
                    warn_ratelimited!(
                        "virtio-blk: write beyond the end of the disk (sector {sector})"
                    );
                    return VIRTIO_BLK_S_IOERR;
                };
                let mut left = len as usize;
                while left > 0 {
                    let n = left.min(self.buf.len());
                    if reader.read_exact(&mut self.buf[..n]).is_err()
                        || write_all_at(&self.disk, &self.buf[..n], offset).is_err()
                    {
                        return VIRTIO_BLK_S_IOERR;
                    }
                    left -= n;
                    offset += n as u64;
                }
                VIRTIO_BLK_S_OK
            }
            VIRTIO_BLK_T_FLUSH => match self.disk.sync_data() {
                Ok(()) => VIRTIO_BLK_S_OK,
                Err(e) => {
                    warn_ratelimited!("virtio-blk: fdatasync failed: {e}");
                    VIRTIO_BLK_S_IOERR
                }
            },
            VIRTIO_BLK_T_GET_ID => {
                let n = writer.available_bytes().min(self.id.len());
                match writer.write_all(&self.id[..n]) {
                    Ok(()) => VIRTIO_BLK_S_OK,
                    Err(_) => VIRTIO_BLK_S_IOERR,
                }
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                // One segment: le64 sector, le32 num_sectors, le32 flags (bit 0: unmap).
                let mut seg = [0u8; 16];
                if reader.available_bytes() != 16 || reader.read_exact(&mut seg).is_err() {
                    return VIRTIO_BLK_S_IOERR;
                }
                let mut s = [0u8; 8];
                s.copy_from_slice(&seg[0..8]);
                let start = u64::from_le_bytes(s);
                let count = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
                let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
                let bytes = u64::from(count) * SECTOR_SIZE;
                let Some(offset) = self.range_ok(start, bytes) else {
                    return VIRTIO_BLK_S_IOERR;
                };
                if kind == VIRTIO_BLK_T_DISCARD && flags != 0 {
                    return VIRTIO_BLK_S_UNSUPP;
                }
                // Discard and unmapping write-zeroes punch holes; plain write-zeroes zeroes the
                // range in place. Both keep the file size.
                let done = if kind == VIRTIO_BLK_T_DISCARD || flags & 1 != 0 {
                    punch_hole(&self.disk, offset, bytes)
                } else {
                    zero_range(&self.disk, offset, bytes)
                };
                match done {
                    Ok(()) => VIRTIO_BLK_S_OK,
                    Err(_) if kind == VIRTIO_BLK_T_WRITE_ZEROES => {
                        self.write_zeroes_slow(offset, bytes)
                    }
                    Err(e) => {
                        warn_ratelimited!("virtio-blk: discard failed: {e}");
                        VIRTIO_BLK_S_IOERR
                    }
                }
            }
            other => {
                warn_ratelimited!("virtio-blk: unsupported request type {other}");
                VIRTIO_BLK_S_UNSUPP
            }
        }
    }

    fn write_zeroes_slow(&mut self, mut offset: u64, bytes: u64) -> u32 {
        self.buf.fill(0);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(self.buf.len() as u64) as usize;
            if write_all_at(&self.disk, &self.buf[..n], offset).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            left -= n as u64;
            offset += n as u64;
        }
        VIRTIO_BLK_S_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk may be a block device, whose metadata length is 0: the capacity comes from
    /// its end offset (found booting the Docker VM with `--disk /dev/vda` inside a VM).
    #[test]
    fn test_capacity_of_a_block_device_is_its_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 3 << 20]).expect("write image");
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&image)
            .output();
        let dev = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            Ok(o) => {
                println!(
                    "skipped: losetup cannot attach a loop device here: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return;
            }
            Err(e) => {
                println!("skipped: losetup not runnable: {e}");
                return;
            }
        };
        let opened = Block::open(Path::new(&dev), true, None);
        let _ = std::process::Command::new("losetup")
            .args(["-d", &dev])
            .status();
        let block = opened.expect("open loop device");
        assert_eq!(block.capacity_sectors, (3 << 20) / SECTOR_SIZE);
        let file = Block::open(&image, true, None).expect("open image file");
        assert_eq!(file.capacity_sectors, (3 << 20) / SECTOR_SIZE);
    }
}
