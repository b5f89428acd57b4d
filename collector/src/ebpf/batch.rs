//! Reading per-CPU maps in few `bpf(2)` calls: `BPF_MAP_LOOKUP_BATCH` (Linux 5.6, commits
//! aa2e93b8e58e "bpf: Add lookup and update batch ops to arraymap" and 057996380a42 "bpf: Add
//! batch ops to all htab bpf map"), which aya 0.14 does not offer.
//!
//! - [`PerCpuArrayReader`] reads the first `n` slots of a per-CPU array. Where the kernel does
//!   not know the command (before 5.6: `EINVAL`) or the map type has no batch operation
//!   (`ENOTSUPP`), each slot is looked up on its own (`BPF_MAP_LOOKUP_ELEM`), and the reader
//!   remembers to do so from then on.
//! - [`PerCpuHashReader`] reads every entry of a per-CPU hash map, a batch of buckets per call
//!   instead of two calls per entry (`BPF_MAP_GET_NEXT_KEY`, then the lookup). Where the kernel
//!   refuses batches it says so, and its caller walks the map as before.
//!
//! The values land in buffers kept from one read to the next, and each entry's per-CPU values
//! are folded into one as they are read: a read allocates nothing once the buffers have grown
//! to what the host holds.

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use aya::maps::{Map, MapData, PerCpuHashMap};

/// `BPF_MAP_LOOKUP_ELEM` (`enum bpf_cmd` in `include/uapi/linux/bpf.h`).
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
/// `BPF_MAP_LOOKUP_BATCH`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel-internal "operation not supported" a map type without batch operations answers
/// (`include/linux/errno.h`), distinct from `EOPNOTSUPP`.
const ENOTSUPP: i32 = 524;

/// Slots per batch call: bounds the raw buffer (at 2 CPUs and 160-byte values, 320 kB) however
/// many peers there are; 10,000 peers take 10 calls per array.
const BATCH_SLOTS: u32 = 1024;

/// The `batch` member of `union bpf_attr`, as the kernel lays it out: eight-byte aligned
/// pointers, then `count` and `map_fd`, then the two flag words (48 bytes).
#[repr(C)]
#[derive(Debug, Default)]
struct BatchAttr {
    /// The key the batch starts after; 0 (NULL) starts at the first.
    in_batch: u64,
    /// Where the kernel writes the last key it returned.
    out_batch: u64,
    /// Room for `count` keys.
    keys: u64,
    /// Room for `count` values, each `round_up(value_size, 8) * possible CPUs` bytes.
    values: u64,
    /// In: slots of room; out: slots filled.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The `map_elem` member of `union bpf_attr` (`BPF_MAP_LOOKUP_ELEM`).
#[repr(C)]
#[derive(Debug, Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Reads per-CPU array slots `0..n`, summed over CPUs, with as few syscalls as the kernel
/// allows.
#[derive(Debug)]
pub(super) struct PerCpuArrayReader<V> {
    /// A duplicate of the map's descriptor (aya keeps the map's own).
    fd: OwnedFd,
    /// Possible CPUs: the number of values per slot.
    cpus: usize,
    /// `false` once the kernel refused a batch: per-slot lookups from then on.
    batch: bool,
    /// The raw keys (u32 slots) of one batch.
    keys: Vec<u8>,
    /// The raw per-CPU values of one batch, kept across reads.
    raw: Vec<u8>,
    _value: PhantomData<V>,
}

impl<V: aya::Pod + Default> PerCpuArrayReader<V> {
    /// A reader of `map`, a per-CPU array of `V`, on a host with `cpus` possible CPUs.
    pub(super) fn new(map: &Map, cpus: usize) -> io::Result<Self> {
        let Map::PerCpuArray(data) = map else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a per-CPU array"));
        };
        Ok(Self::from_fd(data.fd().as_fd().try_clone_to_owned()?, cpus))
    }

    fn from_fd(fd: OwnedFd, cpus: usize) -> Self {
        Self { fd, cpus, batch: true, keys: Vec::new(), raw: Vec::new(), _value: PhantomData }
    }

    /// Bytes of one slot: every CPU's value, each padded to 8 bytes.
    fn stride() -> usize {
        size_of::<V>().next_multiple_of(8)
    }

    /// Slots `0..count`, each folded over CPUs with `fold` from `V::default()`, into `out`
    /// (cleared first; its allocation is kept).
    pub(super) fn read(
        &mut self,
        count: u32,
        fold: impl Fn(V, V) -> V,
        out: &mut Vec<V>,
    ) -> io::Result<()> {
        out.clear();
        // Exactly: a gateway's peers, not the next power of two above them.
        out.reserve_exact(usize::try_from(count).unwrap_or(0));
        let mut start = 0;
        while start < count {
            let slots = BATCH_SLOTS.min(count - start);
            self.read_slots(start, slots)?;
            self.fold_into(&fold, out);
            start += slots;
        }
        Ok(())
    }

    /// Reads slots `start..start + slots` into `raw`.
    fn read_slots(&mut self, start: u32, slots: u32) -> io::Result<()> {
        let length = usize::try_from(slots).unwrap_or(usize::MAX);
        self.raw.resize(length * Self::stride() * self.cpus, 0);
        self.keys.resize(length * size_of::<u32>(), 0);
        if self.batch {
            // The batch starts after the slot before `start`. The whole range exists in an
            // array: the end (ENOENT) only when `slots` reached past it.
            let after = start.checked_sub(1);
            match lookup_batch(self.fd.as_fd(), after, slots, &mut self.keys, &mut self.raw) {
                Ok(Batch { filled, .. }) if filled == slots => return Ok(()),
                Ok(Batch { filled, .. }) => {
                    return Err(io::Error::other(format!(
                        "the batch lookup from slot {start} filled {filled} of {slots} slots"
                    )));
                }
                Err(error) if batch_refused(&error) => {
                    log::debug!("BPF_MAP_LOOKUP_BATCH refused ({error}): one lookup per slot");
                    self.batch = false;
                }
                Err(error) => return Err(error),
            }
        }
        let slot_bytes = Self::stride() * self.cpus;
        for (key, slot) in (start..start + slots).zip(self.raw.chunks_exact_mut(slot_bytes)) {
            lookup_elem(self.fd.as_fd(), key, slot)?;
        }
        Ok(())
    }

    /// Appends the slots in `raw` to `out`, each folded over CPUs.
    fn fold_into(&self, fold: impl Fn(V, V) -> V, out: &mut Vec<V>) {
        let slot_bytes = Self::stride() * self.cpus;
        out.extend(
            self.raw.chunks_exact(slot_bytes).map(|slot| {
                slot.chunks_exact(Self::stride()).map(pod::<V>).fold(V::default(), &fold)
            }),
        );
    }
}

/// Entries per batch call of a hash map: the kernel copies whole buckets, so a batch must hold
/// the longest bucket (far fewer entries than this); bounds the raw buffer (at 2 CPUs and u64
/// values, 32 kB).
const BATCH_ENTRIES: u32 = 2048;

/// A per-CPU hash map and its batch reader.
pub(super) type BatchedHashMap<K, V> = (PerCpuHashMap<MapData, K, V>, PerCpuHashReader<K, V>);

/// Reads every entry of a per-CPU hash map of `K` to `V`, summed over CPUs, in batches.
#[derive(Debug)]
pub(super) struct PerCpuHashReader<K, V> {
    /// A duplicate of the map's descriptor (aya keeps the map's own).
    fd: OwnedFd,
    /// Possible CPUs: the number of values per entry.
    cpus: usize,
    /// `false` once the kernel refused a batch.
    batch: bool,
    /// The raw keys of one batch.
    keys: Vec<u8>,
    /// The raw per-CPU values of one batch.
    raw: Vec<u8>,
    _entry: PhantomData<(K, V)>,
}

impl<K: aya::Pod, V: aya::Pod + Default> PerCpuHashReader<K, V> {
    /// A reader of `map`, a per-CPU hash map of `K` to `V`, on a host with `cpus` possible CPUs.
    pub(super) fn new(map: &Map, cpus: usize) -> io::Result<Self> {
        let Map::PerCpuHashMap(data) = map else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a per-CPU hash map"));
        };
        Ok(Self::from_fd(data.fd().as_fd().try_clone_to_owned()?, cpus))
    }

    fn from_fd(fd: OwnedFd, cpus: usize) -> Self {
        Self { fd, cpus, batch: true, keys: Vec::new(), raw: Vec::new(), _entry: PhantomData }
    }

    /// Every entry of `map` (the map this reader was made of), its values folded over CPUs
    /// with `fold` from `V::default()`, into `out` (cleared first): in batches, else in one walk
    /// of the map, where the kernel refuses batches (before 5.6) or a batch fails (logged,
    /// `what` naming the map).
    pub(super) fn read_all(
        &mut self,
        map: &PerCpuHashMap<MapData, K, V>,
        what: &str,
        fold: impl Fn(V, V) -> V,
        out: &mut Vec<(K, V)>,
    ) {
        let batched = self.read(&fold, out).unwrap_or_else(|error| {
            log::debug!("reading {what} in batches: {error}; walking it");
            false
        });
        if !batched {
            out.clear();
            let walked = map.iter().filter_map(Result::ok);
            out.extend(
                walked.map(|(key, values)| (key, values.iter().copied().fold(V::default(), &fold))),
            );
        }
    }

    /// Every entry, its values folded over CPUs with `fold` from `V::default()`, into `out`
    /// (cleared first), in the map's order; `false` (and `out` empty) when the kernel refuses
    /// batches, now or at an earlier read.
    ///
    /// Entries added or removed during the read may be seen or not, as with any walk.
    fn read(&mut self, fold: impl Fn(V, V) -> V, out: &mut Vec<(K, V)>) -> io::Result<bool> {
        out.clear();
        if !self.batch {
            return Ok(false);
        }
        let entries = usize::try_from(BATCH_ENTRIES).unwrap_or(usize::MAX);
        let stride = size_of::<V>().next_multiple_of(8);
        self.keys.resize(entries * size_of::<K>(), 0);
        self.raw.resize(entries * stride * self.cpus, 0);
        let mut after = None;
        loop {
            let batch = match lookup_batch(
                self.fd.as_fd(),
                after,
                BATCH_ENTRIES,
                &mut self.keys,
                &mut self.raw,
            ) {
                Ok(batch) => batch,
                Err(error) if batch_refused(&error) => {
                    log::debug!("BPF_MAP_LOOKUP_BATCH refused ({error}): the map is walked");
                    self.batch = false;
                    out.clear();
                    return Ok(false);
                }
                Err(error) => return Err(error),
            };
            let filled = usize::try_from(batch.filled).unwrap_or(usize::MAX).min(entries);
            let keys = self.keys.chunks_exact(size_of::<K>());
            let values = self.raw.chunks_exact(stride * self.cpus);
            out.extend(keys.zip(values).take(filled).map(|(key, values)| {
                let value = values.chunks_exact(stride).map(pod::<V>).fold(V::default(), &fold);
                (pod::<K>(key), value)
            }));
            if batch.ended {
                return Ok(true);
            }
            after = Some(batch.next);
        }
    }
}

/// The `T` at the start of `bytes` (a key or one CPU's value as the kernel copied it).
///
/// # Panics
///
/// When `bytes` is shorter than a `T`: the buffers are sized from `T`, so never.
fn pod<T: aya::Pod>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= size_of::<T>(), "a buffer sized below its type");
    // SAFETY: `bytes` holds at least size_of::<T>() bytes (checked), read unaligned; T is Pod,
    // so any bytes are a valid T.
    unsafe { bytes.as_ptr().cast::<T>().read_unaligned() }
}

/// What one `BPF_MAP_LOOKUP_BATCH` returned.
#[derive(Clone, Copy, Debug)]
struct Batch {
    /// Entries written to the key and value buffers.
    filled: u32,
    /// Where the next batch starts (an array's last slot read, a hash map's next bucket).
    next: u32,
    /// The kernel reached the map's end (`ENOENT`), with `filled` entries before it.
    ended: bool,
}

/// One `BPF_MAP_LOOKUP_BATCH` of up to `count` entries, from the map's start when `after` is
/// `None`, else from where the batch that returned `next == after` stopped: fills `keys` and
/// `values` (sized for `count` entries by the caller).
fn lookup_batch(
    fd: BorrowedFd<'_>,
    after: Option<u32>,
    count: u32,
    keys: &mut [u8],
    values: &mut [u8],
) -> io::Result<Batch> {
    let in_batch = after.unwrap_or(0);
    let mut out_batch = 0u32;
    let mut attr = BatchAttr {
        in_batch: if after.is_some() { (&raw const in_batch) as u64 } else { 0 },
        out_batch: (&raw mut out_batch) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count,
        map_fd: fd_number(fd)?,
        ..BatchAttr::default()
    };
    // SAFETY: attr is a valid `batch` member of bpf_attr, passed with its size; the kernel
    // reads one u32 token from in_batch (when given), writes at most `count` keys and values
    // into buffers the caller sized for `count` entries (keys: the key size each, values: the
    // padded per-CPU size each), one u32 token into out_batch, and `count` back into attr.
    // Every pointer outlives the call.
    let result = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>())
    };
    let error = io::Error::last_os_error();
    let ended = result < 0 && error.raw_os_error() == Some(libc::ENOENT);
    if result < 0 && !ended {
        return Err(error);
    }
    Ok(Batch { filled: attr.count, next: out_batch, ended })
}

/// Whether `error` says the kernel has no batch lookup for this map (before 5.6: `EINVAL`;
/// a map type without batch operations: `ENOTSUPP`).
fn batch_refused(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINVAL | ENOTSUPP))
}

/// One `BPF_MAP_LOOKUP_ELEM` of slot `key` into `value` (the padded per-CPU size).
fn lookup_elem(fd: BorrowedFd<'_>, key: u32, value: &mut [u8]) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd_number(fd)?,
        key: (&raw const key) as u64,
        value: value.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    // SAFETY: attr is a valid `map_elem` member of bpf_attr, passed with its size; the kernel
    // writes one per-CPU value, the size the caller gave `value`, and reads the key.
    let result = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_ELEM, &raw mut attr, size_of::<ElemAttr>())
    };
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn fd_number(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;

    use super::*;

    /// `BPF_MAP_CREATE`, `BPF_MAP_UPDATE_ELEM`, `BPF_MAP_TYPE_PERCPU_ARRAY`.
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

    /// A value whose size is not a multiple of 8, so the per-CPU padding matters.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct Odd {
        a: u64,
        b: u32,
    }
    // SAFETY: plain integers, any bit pattern valid; the padding is never read as a field.
    unsafe impl aya::Pod for Odd {}

    /// `BPF_MAP_TYPE_PERCPU_HASH`.
    const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;

    /// A map of `map_type` with keys of `key_size` bytes and values of `value_size`.
    fn create_map(map_type: u32, key_size: usize, value_size: usize, entries: u32) -> OwnedFd {
        #[repr(C)]
        #[derive(Default)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
        }
        let mut attr = CreateAttr {
            map_type,
            key_size: u32::try_from(key_size).expect("small"),
            value_size: u32::try_from(value_size).expect("small"),
            max_entries: entries,
        };
        // SAFETY: a valid prefix of bpf_attr for BPF_MAP_CREATE, with its size.
        let fd = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &raw mut attr, size_of::<CreateAttr>())
        };
        assert!(
            fd >= 0,
            "BPF_MAP_CREATE failed (this test needs CAP_BPF: run it as root): {}",
            io::Error::last_os_error()
        );
        // SAFETY: the kernel just returned this descriptor, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("fd")) }
    }

    /// Sets `key` (any Pod key) to the per-CPU `values`.
    fn update<K>(fd: &OwnedFd, key: &K, values: &[u8]) {
        let mut attr = ElemAttr {
            map_fd: fd_number(fd.as_fd()).expect("fd"),
            key: std::ptr::from_ref(key) as u64,
            value: values.as_ptr() as u64,
            ..ElemAttr::default()
        };
        // SAFETY: a valid map_elem attr; the kernel reads one key and one per-CPU value.
        let result = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_ELEM, &raw mut attr, size_of::<ElemAttr>())
        };
        assert_eq!(result, 0, "BPF_MAP_UPDATE_ELEM: {}", io::Error::last_os_error());
    }

    fn sum(x: Odd, y: Odd) -> Odd {
        Odd { a: x.a + y.a, b: x.b + y.b }
    }

    #[test]
    fn a_batch_read_equals_one_lookup_per_slot_on_a_filled_map() {
        let cpus = aya::util::nr_cpus().expect("possible CPUs");
        let fd = create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, size_of::<Odd>(), 3000);
        let stride = PerCpuArrayReader::<Odd>::stride();
        assert_eq!(stride, 16);
        // Slot k, CPU c: a = 1000 k + c + 1, b = 7 k + c; padding bytes 0xee must not leak.
        for key in 0..3000u32 {
            let mut values = vec![0xee_u8; stride * cpus];
            for (cpu, value) in values.chunks_exact_mut(stride).enumerate() {
                let cpu = u32::try_from(cpu).expect("cpu");
                value[..8].copy_from_slice(&u64::from(1000 * key + cpu + 1).to_ne_bytes());
                value[8..12].copy_from_slice(&(7 * key + cpu).to_ne_bytes());
            }
            update(&fd, &key, &values);
        }
        let dup = || fd.as_fd().try_clone_to_owned().expect("dup");
        let mut batched = PerCpuArrayReader::<Odd>::from_fd(dup(), cpus);
        let mut single = PerCpuArrayReader::<Odd>::from_fd(dup(), cpus);
        single.batch = false;
        let (mut by_batch, mut by_slot) = (Vec::new(), Vec::new());
        batched.read(40, sum, &mut by_batch).expect("batch read");
        assert!(batched.batch, "this kernel (5.6+) must take the batch");
        single.read(40, sum, &mut by_slot).expect("per-slot read");
        assert_eq!(by_batch, by_slot);
        let n = u64::try_from(cpus).expect("cpus");
        let cpu_sum = n * (n - 1) / 2;
        assert_eq!(by_batch.len(), 40);
        assert_eq!(by_batch[0], Odd { a: n + cpu_sum, b: u32::try_from(cpu_sum).expect("b") });
        let b39 = u32::try_from(7 * 39 * n + cpu_sum).expect("b");
        assert_eq!(by_batch[39], Odd { a: 39_000 * n + n + cpu_sum, b: b39 });
        // A second, shorter read reuses the buffers and returns only what it was asked.
        batched.read(3, sum, &mut by_batch).expect("batch read");
        assert_eq!(by_batch, by_slot[..3]);
        // Across batches (1024 slots each) to the array's very end; past it, the kernel stops
        // at the end and the read fails.
        batched.read(3000, sum, &mut by_batch).expect("the whole array");
        single.read(3000, sum, &mut by_slot).expect("per-slot read");
        assert_eq!(by_batch, by_slot);
        let b2999 = u32::try_from(7 * 2999 * n + cpu_sum).expect("b");
        assert_eq!(by_batch[2999], Odd { a: 2_999_000 * n + n + cpu_sum, b: b2999 });
        assert!(batched.read(3001, sum, &mut by_batch).is_err());
    }

    #[test]
    fn a_hash_map_is_read_whole_in_batches_each_entry_summed_over_cpus() {
        let cpus = aya::util::nr_cpus().expect("possible CPUs");
        let n = u64::try_from(cpus).expect("cpus");
        let fd = create_map(BPF_MAP_TYPE_PERCPU_HASH, 8, 8, 8192);
        let dup = || fd.as_fd().try_clone_to_owned().expect("dup");
        let mut reader = PerCpuHashReader::<u64, u64>::from_fd(dup(), cpus);
        let mut entries = vec![(1, 1)];
        assert!(reader.read(u64::saturating_add, &mut entries).expect("an empty map"));
        assert_eq!(entries, []);
        // Key k (sparse, so that the buckets are uneven), CPU c: 10 k + c. More entries than
        // one batch holds.
        let keys: Vec<u64> = (0..5000u64).map(|k| k * 7919 + 3).collect();
        for &key in &keys {
            let values: Vec<u8> = (0..n).flat_map(|cpu| (10 * key + cpu).to_ne_bytes()).collect();
            update(&fd, &key, &values);
        }
        assert!(reader.read(u64::saturating_add, &mut entries).expect("a filled map"));
        assert_eq!(entries.len(), 5000);
        entries.sort_unstable();
        let cpu_sum = n * (n - 1) / 2;
        let expected: Vec<(u64, u64)> = keys.iter().map(|&k| (k, 10 * k * n + cpu_sum)).collect();
        assert_eq!(entries, expected);
        // Read again into the same buffers: the same entries.
        let mut again = Vec::new();
        assert!(reader.read(u64::saturating_add, &mut again).expect("a second read"));
        again.sort_unstable();
        assert_eq!(again, expected);
        // A reader the kernel refused says so and reads nothing; `read_all` then walks the map
        // and finds the same entries.
        let mut refused = PerCpuHashReader::<u64, u64>::from_fd(dup(), cpus);
        refused.batch = false;
        assert!(!refused.read(u64::saturating_add, &mut again).expect("no error"));
        assert_eq!(again, []);
        let data = MapData::from_fd(dup()).expect("the map's data");
        let map: PerCpuHashMap<MapData, u64, u64> =
            PerCpuHashMap::try_from(Map::PerCpuHashMap(data)).expect("a per-CPU hash map");
        let mut walked = Vec::new();
        refused.read_all(&map, "a test map", u64::saturating_add, &mut walked);
        walked.sort_unstable();
        assert_eq!(walked, expected);
        let mut read = Vec::new();
        reader.read_all(&map, "a test map", u64::saturating_add, &mut read);
        read.sort_unstable();
        assert_eq!(read, expected);
    }
}
