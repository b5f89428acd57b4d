//! A small, self-contained parser for the kernel's BTF type information.
//!
//! The kernel exposes its own type information at `/sys/kernel/btf/vmlinux` in the BTF format
//! documented in the kernel's `Documentation/bpf/btf.rst`. This module parses just enough of it to
//! answer the questions the collector needs at start-up: the byte offset and size of a struct
//! member (e.g. `sk_buff::dev`, the fields of a tracepoint's raw record) and the enumerators of an
//! enum (e.g. `skb_drop_reason`), so the eBPF programs can be fed layout constants that match
//! the running kernel.
//!
//! Only the host's native little-endian layout is supported (the kernel always emits BTF in its
//! own byte order); a blob in any other byte order is rejected with [`BtfError::Malformed`].
//!
//! A kind newer than this parser (after `BTF_KIND_ENUM64`) has data of a size it cannot know,
//! so the walk of the type section ends there with a warning; every type before it stays
//! usable, and the kernel's core types (`sk_buff`, `skb_drop_reason`) come early in vmlinux.
//!
//! Hand-written because no crate fits: aya's `Btf` does not expose member offsets, `btfparse`
//! and `btf` (MIT, unmaintained since 2022) fail the whole parse on an unknown kind, and
//! `btf-rs` is LGPL-2.1-or-later, which this MIT/Apache-2.0 project does not take in.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Where the running kernel exposes its own BTF.
const VMLINUX_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// `BTF_MAGIC` from `include/uapi/linux/btf.h`.
const BTF_MAGIC: u16 = 0xeb9f;
/// The only BTF version defined so far.
const BTF_VERSION: u8 = 1;
/// Size of the fixed part of `struct btf_header` (up to and including `str_len`).
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type`.
const TYPE_LEN: usize = 12;
/// Maximum number of typedef/const/volatile/... hops (and anonymous-member nesting levels)
/// followed before a type chain is considered cyclic.
const MAX_RESOLVE_DEPTH: usize = 64;
/// Size of a kernel pointer (the collector only supports 64-bit kernels).
const POINTER_SIZE: u32 = 8;

const KIND_UNKN: u32 = 0;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Errors returned while reading, parsing or querying BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error("failed to read BTF from {}", path.display())]
    Read {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The data is not valid (little-endian, version 1) BTF.
    #[error("malformed BTF: {reason}")]
    Malformed {
        /// What is wrong with the data.
        reason: String,
    },
    /// No struct or union (or typedef of one) with this name exists.
    #[error("no struct or union named `{name}` in BTF")]
    NoType {
        /// The requested type name.
        name: String,
    },
    /// The struct or union has no member with this name (also not inside anonymous members).
    #[error("struct `{type_name}` has no member `{member}`")]
    NoMember {
        /// The struct or union that was searched.
        type_name: String,
        /// The requested member.
        member: String,
    },
    /// The member is a bitfield, so it has no byte offset or byte size.
    #[error("member `{member}` of `{type_name}` is a bitfield")]
    Bitfield {
        /// The struct or union containing the member.
        type_name: String,
        /// The bitfield member.
        member: String,
    },
    /// The member's type has no size (e.g. `void`, a function or an unresolved forward
    /// declaration).
    #[error("member `{member}` of `{type_name}` has a type without a size")]
    Unsized {
        /// The struct or union containing the member.
        type_name: String,
        /// The member whose size was requested.
        member: String,
    },
    /// No enum with this name exists.
    #[error("no enum named `{name}` in BTF")]
    NoEnum {
        /// The requested enum name.
        name: String,
    },
}

/// Shorthand for a [`BtfError::Malformed`].
fn malformed(reason: impl Into<String>) -> BtfError {
    BtfError::Malformed { reason: reason.into() }
}

/// Parsed kernel BTF, indexed for member-offset and enum lookups.
///
/// Keeps the raw blob (a few MiB for vmlinux) plus one `u32` per type and a name index for
/// structs, unions, enums and typedefs.
pub struct KernelBtf {
    /// The raw BTF blob.
    data: Vec<u8>,
    /// Absolute offset of the type section in `data`.
    type_start: usize,
    /// Absolute offset of the string section in `data`.
    str_start: usize,
    /// Length of the string section.
    str_len: usize,
    /// `type_offsets[id - 1]` is the absolute offset of type `id`'s `struct btf_type`.
    type_offsets: Vec<u32>,
    /// Name -> preferred id of a STRUCT or UNION (the first one with members, else the first).
    composites: HashMap<Box<str>, u32>,
    /// Name -> preferred id of an ENUM or ENUM64 (the first one with enumerators, else the first).
    enums: HashMap<Box<str>, u32>,
    /// Name -> id of the first TYPEDEF with that name.
    typedefs: HashMap<Box<str>, u32>,
    /// The kind and id of the type of unknown kind that ended the walk, if one did.
    unknown_kind: Option<(u32, u32)>,
}

impl fmt::Debug for KernelBtf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelBtf")
            .field("bytes", &self.data.len())
            .field("types", &self.type_offsets.len())
            .field("type_start", &self.type_start)
            .field("str_start", &self.str_start)
            .field("str_len", &self.str_len)
            .field("composites", &self.composites.len())
            .field("enums", &self.enums.len())
            .field("typedefs", &self.typedefs.len())
            .field("unknown_kind", &self.unknown_kind)
            .finish()
    }
}

/// A decoded `struct btf_type` header.
#[derive(Debug, Clone, Copy)]
struct TypeHeader {
    /// Absolute offset of the header in the blob.
    pos: usize,
    /// Offset of the name in the string section (0 = anonymous).
    name_off: u32,
    /// `BTF_KIND_*`.
    kind: u32,
    /// Number of members / enumerators / parameters.
    vlen: u32,
    /// The `kind_flag` bit.
    kflag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
}

/// Where a member was found by [`KernelBtf::find_member`].
#[derive(Debug, Clone, Copy)]
struct FoundMember {
    /// Offset in bits from the start of the outermost struct.
    bit_offset: u64,
    /// Type id of the member.
    type_id: u32,
    /// Whether the member is declared as a bitfield.
    bitfield: bool,
}

/// Reads a little-endian `u32` at `pos`, if in bounds.
fn read_u32(data: &[u8], pos: usize) -> Option<u32> {
    let bytes = data.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Reads a little-endian `u16` at `pos`, if in bounds.
fn read_u16(data: &[u8], pos: usize) -> Option<u16> {
    let bytes = data.get(pos..pos.checked_add(2)?)?;
    Some(u16::from_le_bytes(bytes.try_into().ok()?))
}

/// Size in bytes of the kind-specific data following a `struct btf_type`; `None` for a kind
/// this parser does not know.
fn extra_len(kind: u32, vlen: u32) -> Option<usize> {
    let vlen = vlen as usize;
    Some(match kind {
        KIND_INT => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION => vlen * 12,
        KIND_ENUM => vlen * 8,
        KIND_ENUM64 => vlen * 12,
        KIND_FUNC_PROTO => vlen * 8,
        KIND_VAR => 4,
        KIND_DATASEC => vlen * 12,
        KIND_DECL_TAG => 4,
        KIND_UNKN | KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST
        | KIND_RESTRICT | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        _ => return None,
    })
}

/// Inserts `id` under `name` unless an entry with members already exists; an entry without
/// members (`vlen == 0`, e.g. an empty placeholder) is replaced by one with members.
fn insert_preferred(
    map: &mut HashMap<Box<str>, (u32, bool)>,
    name: &str,
    id: u32,
    has_members: bool,
) {
    match map.get_mut(name) {
        Some(entry) => {
            if !entry.1 && has_members {
                *entry = (id, true);
            }
        }
        None => {
            map.insert(name.into(), (id, has_members));
        }
    }
}

impl KernelBtf {
    /// Reads and parses the running kernel's BTF from `/sys/kernel/btf/vmlinux`.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF_PATH))
    }

    /// Reads and parses a raw BTF file (such as `/sys/kernel/btf/vmlinux`).
    fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data =
            std::fs::read(path).map_err(|source| BtfError::Read { path: path.into(), source })?;
        let btf = Self::parse(data)?;
        log::debug!("parsed {} BTF types from {}", btf.type_offsets.len(), path.display());
        Ok(btf)
    }

    /// Parses a raw BTF blob (header, type section and string section) in little-endian layout.
    ///
    /// Validates the header and section bounds, walks every type once (up to the first of a
    /// kind newer than `BTF_KIND_ENUM64`, whose size is unknown) and builds the name index.
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let magic = read_u16(&data, 0).ok_or_else(|| malformed("shorter than the BTF header"))?;
        if magic != BTF_MAGIC {
            if magic == BTF_MAGIC.swap_bytes() {
                return Err(malformed("big-endian BTF is not supported"));
            }
            return Err(malformed(format!("bad magic {magic:#06x}")));
        }
        if data.len() < HEADER_LEN {
            return Err(malformed("shorter than the BTF header"));
        }
        let version = data[2];
        if version != BTF_VERSION {
            return Err(malformed(format!("unsupported BTF version {version}")));
        }
        let field = |pos| read_u32(&data, pos).ok_or_else(|| malformed("truncated header"));
        let hdr_len = field(4)? as usize;
        let type_off = field(8)? as usize;
        let type_len = field(12)? as usize;
        let str_off = field(16)? as usize;
        let str_len = field(20)? as usize;
        if hdr_len < HEADER_LEN || hdr_len > data.len() {
            return Err(malformed(format!("invalid header length {hdr_len}")));
        }
        let section = |name: &str, off: usize, len: usize| {
            let start = hdr_len.checked_add(off);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(start), Some(end)) if end <= data.len() => Ok((start, end)),
                _ => Err(malformed(format!(
                    "{name} section ({off}+{len} after a {hdr_len}-byte header) exceeds the \
                     {}-byte blob",
                    data.len()
                ))),
            }
        };
        let (type_start, type_end) = section("type", type_off, type_len)?;
        let (str_start, _) = section("string", str_off, str_len)?;
        if u32::try_from(data.len()).is_err() {
            return Err(malformed("BTF blob larger than 4 GiB"));
        }

        let mut btf = KernelBtf {
            data,
            type_start,
            str_start,
            str_len,
            type_offsets: Vec::new(),
            composites: HashMap::new(),
            enums: HashMap::new(),
            typedefs: HashMap::new(),
            unknown_kind: None,
        };
        btf.index_types(type_end)?;
        Ok(btf)
    }

    /// Walks the type section, recording each type's offset and indexing named types.
    fn index_types(&mut self, type_end: usize) -> Result<(), BtfError> {
        let mut composites = HashMap::new();
        let mut enums = HashMap::new();
        let mut typedefs: HashMap<Box<str>, u32> = HashMap::new();
        let mut offsets = Vec::new();
        let mut pos = self.type_start;
        while pos < type_end {
            let id = u32::try_from(offsets.len() + 1).map_err(|_| malformed("too many types"))?;
            if pos + TYPE_LEN > type_end {
                return Err(malformed(format!("type {id} truncated")));
            }
            let header = self.header_at(pos)?;
            let Some(extra) = extra_len(header.kind, header.vlen) else {
                log::warn!(
                    "BTF type {id} is of kind {}, newer than this parser: the {} types before it \
                     are used, the {} bytes from it on are not read",
                    header.kind,
                    offsets.len(),
                    type_end - pos
                );
                self.unknown_kind = Some((header.kind, id));
                break;
            };
            let end = pos + TYPE_LEN + extra;
            if end > type_end {
                return Err(malformed(format!("type {id} (kind {}) truncated", header.kind)));
            }
            // The blob is at most 4 GiB (checked in `parse`), so this cannot fail.
            offsets.push(u32::try_from(pos).map_err(|_| malformed("type offset overflow"))?);
            if header.name_off != 0 {
                match header.kind {
                    KIND_STRUCT | KIND_UNION => {
                        let name = self.str_at(header.name_off)?;
                        insert_preferred(&mut composites, name, id, header.vlen > 0);
                    }
                    KIND_ENUM | KIND_ENUM64 => {
                        let name = self.str_at(header.name_off)?;
                        insert_preferred(&mut enums, name, id, header.vlen > 0);
                    }
                    KIND_TYPEDEF => {
                        let name = self.str_at(header.name_off)?;
                        if !typedefs.contains_key(name) {
                            typedefs.insert(name.into(), id);
                        }
                    }
                    _ => {}
                }
            }
            pos = end;
        }
        let strip = |map: HashMap<Box<str>, (u32, bool)>| {
            map.into_iter().map(|(name, (id, _))| (name, id)).collect::<HashMap<_, _>>()
        };
        self.composites = strip(composites);
        self.enums = strip(enums);
        self.typedefs = typedefs;
        offsets.shrink_to_fit();
        self.type_offsets = offsets;
        Ok(())
    }

    /// Reads `u32` at absolute offset `pos`.
    fn u32_at(&self, pos: usize) -> Result<u32, BtfError> {
        read_u32(&self.data, pos).ok_or_else(|| malformed(format!("read past end at {pos}")))
    }

    /// Decodes the `struct btf_type` at absolute offset `pos`.
    fn header_at(&self, pos: usize) -> Result<TypeHeader, BtfError> {
        let info = self.u32_at(pos + 4)?;
        Ok(TypeHeader {
            pos,
            name_off: self.u32_at(pos)?,
            kind: (info >> 24) & 0x1f,
            vlen: info & 0xffff,
            kflag: info >> 31 == 1,
            size_or_type: self.u32_at(pos + 8)?,
        })
    }

    /// The header of type `id` (`id` 0, `void`, has none).
    fn type_by_id(&self, id: u32) -> Result<TypeHeader, BtfError> {
        let index = (id as usize).checked_sub(1).ok_or_else(|| malformed("reference to void"))?;
        let pos = self
            .type_offsets
            .get(index)
            .ok_or_else(|| malformed(format!("reference to unknown type id {id}")))?;
        self.header_at(*pos as usize)
    }

    /// The raw bytes of the NUL-terminated string at `off` in the string section.
    fn str_bytes_at(&self, off: u32) -> Result<&[u8], BtfError> {
        let off = off as usize;
        if off >= self.str_len {
            return Err(malformed(format!("string offset {off} out of bounds")));
        }
        let section = &self.data[self.str_start + off..self.str_start + self.str_len];
        let len = section
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed(format!("unterminated string at {off}")))?;
        Ok(&section[..len])
    }

    /// The string at `off` in the string section.
    fn str_at(&self, off: u32) -> Result<&str, BtfError> {
        std::str::from_utf8(self.str_bytes_at(off)?)
            .map_err(|_| malformed(format!("string at {off} is not UTF-8")))
    }

    /// Follows typedef/const/volatile/restrict/type-tag chains to the underlying type.
    /// Returns `None` for `void`.
    fn resolve(&self, mut id: u32) -> Result<Option<TypeHeader>, BtfError> {
        for _ in 0..MAX_RESOLVE_DEPTH {
            if id == 0 {
                return Ok(None);
            }
            let header = self.type_by_id(id)?;
            match header.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = header.size_or_type;
                }
                _ => return Ok(Some(header)),
            }
        }
        Err(malformed(format!("type chain starting at {id} is too long or cyclic")))
    }

    /// Size in bytes of type `id`, or `None` if it has no size (void, functions, forwards).
    fn type_size(&self, id: u32) -> Result<Option<u32>, BtfError> {
        let mut id = id;
        let mut multiplier: u64 = 1;
        for _ in 0..MAX_RESOLVE_DEPTH {
            let Some(header) = self.resolve(id)? else { return Ok(None) };
            let size = match header.kind {
                KIND_PTR => POINTER_SIZE,
                KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                    header.size_or_type
                }
                KIND_ARRAY => {
                    // struct btf_array { u32 type; u32 index_type; u32 nelems; }
                    id = self.u32_at(header.pos + TYPE_LEN)?;
                    let nelems = self.u32_at(header.pos + TYPE_LEN + 8)?;
                    multiplier = multiplier.saturating_mul(u64::from(nelems));
                    continue;
                }
                _ => return Ok(None),
            };
            let total = multiplier.saturating_mul(u64::from(size));
            return u32::try_from(total)
                .map(Some)
                .map_err(|_| malformed(format!("size of type {id} overflows u32")));
        }
        Err(malformed(format!("array nesting at type {id} is too deep")))
    }

    /// Finds the struct/union named `type_name` (directly, or through a typedef of one).
    fn find_composite(&self, type_name: &str) -> Result<TypeHeader, BtfError> {
        let no_type = || BtfError::NoType { name: type_name.to_owned() };
        if let Some(&id) = self.composites.get(type_name) {
            return self.type_by_id(id);
        }
        let &id = self.typedefs.get(type_name).ok_or_else(no_type)?;
        match self.resolve(id)? {
            Some(header) if matches!(header.kind, KIND_STRUCT | KIND_UNION) => Ok(header),
            _ => Err(no_type()),
        }
    }

    /// Searches struct/union `composite` for a member named `member`, descending into
    /// anonymous struct/union members. Offsets are summed up along the way.
    fn find_member(
        &self,
        composite: TypeHeader,
        member: &[u8],
        base_bits: u64,
        depth: usize,
    ) -> Result<Option<FoundMember>, BtfError> {
        if depth > MAX_RESOLVE_DEPTH {
            return Err(malformed("anonymous members nested too deeply"));
        }
        for i in 0..composite.vlen as usize {
            // struct btf_member { u32 name_off; u32 type; u32 offset; }
            let pos = composite.pos + TYPE_LEN + i * 12;
            let name_off = self.u32_at(pos)?;
            let type_id = self.u32_at(pos + 4)?;
            let raw_offset = self.u32_at(pos + 8)?;
            let (bit_offset, bitfield_size) = if composite.kflag {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24)
            } else {
                (raw_offset, 0)
            };
            let bit_offset = base_bits + u64::from(bit_offset);
            if name_off != 0 {
                if self.str_bytes_at(name_off)? == member {
                    let bitfield = bitfield_size != 0 || self.is_legacy_bitfield(type_id)?;
                    return Ok(Some(FoundMember { bit_offset, type_id, bitfield }));
                }
                continue;
            }
            // Anonymous member: only structs and unions can contain named fields.
            match self.resolve(type_id)? {
                Some(inner) if matches!(inner.kind, KIND_STRUCT | KIND_UNION) => {
                    if let Some(found) = self.find_member(inner, member, bit_offset, depth + 1)? {
                        return Ok(Some(found));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Without `kind_flag`, a bitfield is encoded in the member's INT type: its `nr_bits`
    /// differs from its size or its in-int bit offset is non-zero.
    fn is_legacy_bitfield(&self, type_id: u32) -> Result<bool, BtfError> {
        match self.resolve(type_id)? {
            Some(header) if header.kind == KIND_INT => {
                let encoding = self.u32_at(header.pos + TYPE_LEN)?;
                let nr_bits = encoding & 0xff;
                let int_offset = (encoding >> 16) & 0xff;
                Ok(int_offset != 0 || u64::from(nr_bits) != u64::from(header.size_or_type) * 8)
            }
            _ => Ok(false),
        }
    }

    /// Looks up `member` in `type_name`, rejecting bitfields.
    fn locate(&self, type_name: &str, member: &str) -> Result<FoundMember, BtfError> {
        let composite = self.find_composite(type_name)?;
        let found = self.find_member(composite, member.as_bytes(), 0, 0)?.ok_or_else(|| {
            BtfError::NoMember { type_name: type_name.to_owned(), member: member.to_owned() }
        })?;
        if found.bitfield || found.bit_offset % 8 != 0 {
            return Err(BtfError::Bitfield {
                type_name: type_name.to_owned(),
                member: member.to_owned(),
            });
        }
        Ok(found)
    }

    /// Byte offset of `member` (e.g. `"dev"` or `"network_header"`) inside struct `type_name`,
    /// searching through anonymous struct/union members (sk_buff's `dev` sits in an anonymous
    /// union inside an anonymous struct; `network_header` inside a struct_group's anonymous
    /// struct) and summing their offsets; resolves typedefs/const/volatile of the struct itself.
    ///
    /// Errors with [`BtfError::NoType`], [`BtfError::NoMember`], or [`BtfError::Bitfield`] if
    /// the member is a bitfield.
    pub fn member_offset(&self, type_name: &str, member: &str) -> Result<u32, BtfError> {
        let found = self.locate(type_name, member)?;
        u32::try_from(found.bit_offset / 8)
            .map_err(|_| malformed(format!("offset of {type_name}::{member} overflows u32")))
    }

    /// Size in bytes of member `member` of struct `type_name` (resolving
    /// typedef/const/volatile; pointers are 8 bytes; arrays are element size times length).
    ///
    /// Errors like [`member_offset`](Self::member_offset), plus [`BtfError::Unsized`] if the
    /// member's type has no size.
    pub fn member_size(&self, type_name: &str, member: &str) -> Result<u32, BtfError> {
        let found = self.locate(type_name, member)?;
        self.type_size(found.type_id)?.ok_or_else(|| BtfError::Unsized {
            type_name: type_name.to_owned(),
            member: member.to_owned(),
        })
    }

    /// Every enumerator of the enum named `enum_name`: (name, value), in declaration order.
    ///
    /// Values of unsigned enums (`kind_flag` clear) are zero-extended; 64-bit unsigned values
    /// above `i64::MAX` wrap around to negative numbers.
    pub fn enum_values(&self, enum_name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let &id =
            self.enums.get(enum_name).ok_or_else(|| BtfError::NoEnum { name: enum_name.into() })?;
        let header = self.type_by_id(id)?;
        let vlen = header.vlen as usize;
        let mut values = Vec::with_capacity(vlen);
        for i in 0..vlen {
            let (pos, value) = if header.kind == KIND_ENUM64 {
                // struct btf_enum64 { u32 name_off; u32 val_lo32; u32 val_hi32; }
                let pos = header.pos + TYPE_LEN + i * 12;
                let lo = u64::from(self.u32_at(pos + 4)?);
                let hi = u64::from(self.u32_at(pos + 8)?);
                #[expect(
                    clippy::cast_possible_wrap,
                    reason = "BTF stores the raw 64-bit pattern; wrapping is documented"
                )]
                let value = (hi << 32 | lo) as i64;
                (pos, value)
            } else {
                // struct btf_enum { u32 name_off; s32 val; }
                let pos = header.pos + TYPE_LEN + i * 8;
                let raw = self.u32_at(pos + 4)?;
                #[expect(
                    clippy::cast_possible_wrap,
                    reason = "signed enums store an s32 bit pattern"
                )]
                let value = if header.kflag { i64::from(raw as i32) } else { i64::from(raw) };
                (pos, value)
            };
            let name = self.str_at(self.u32_at(pos)?)?;
            values.push((name.to_owned(), value));
        }
        Ok(values)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Builds a BTF blob from a type section and a string section.
    fn blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let type_len = u32::try_from(types.len() * 4).expect("small");
        let str_len = u32::try_from(strings.len()).expect("small");
        let mut data = Vec::new();
        data.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        data.push(BTF_VERSION);
        data.push(0);
        for word in [24, 0, type_len, type_len, str_len] {
            data.extend_from_slice(&u32::to_le_bytes(word));
        }
        for word in types {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data.extend_from_slice(strings);
        data
    }

    /// A BTF of one signed enum, `name`, with `values` in order.
    pub(in crate::ebpf) fn enum_blob(name: &str, values: &[(&str, i32)]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut add = |text: &str| {
            let offset = u32::try_from(strings.len()).expect("small");
            strings.extend_from_slice(text.as_bytes());
            strings.push(0);
            offset
        };
        let count = u32::try_from(values.len()).expect("small");
        let mut types = vec![add(name), info(KIND_ENUM, count, true), 4];
        for (enumerator, value) in values {
            types.push(add(enumerator));
            types.push(u32::from_ne_bytes(value.to_ne_bytes()));
        }
        blob(&types, &strings)
    }

    /// `info` word for a type.
    fn info(kind: u32, vlen: u32, kflag: bool) -> u32 {
        (u32::from(kflag) << 31) | (kind << 24) | vlen
    }

    /// A tiny BTF:
    /// ```c
    /// typedef struct outer outer_t;
    /// struct outer { int a; union { int b; char *p; }; int bits:3; int c; };
    /// enum color { RED = -1, GREEN = 7 };
    /// ```
    fn tiny() -> Vec<u8> {
        // String offsets.
        let strings = b"\0int\0outer\0a\0b\0p\0color\0RED\0GREEN\0c\0bits\0outer_t\0char\0";
        let off = |s: &str| {
            let needle = format!("\0{s}\0");
            let pos = strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("string present");
            u32::try_from(pos + 1).expect("small")
        };
        let types = [
            // 1: int (signed, 32 bits)
            off("int"),
            info(KIND_INT, 0, false),
            4,
            (1 << 24) | 32,
            // 2: struct outer, kflag set (bitfield encoding), 4 members, size 16
            off("outer"),
            info(KIND_STRUCT, 4, true),
            16,
            off("a"),
            1,
            0,
            0,
            3,
            64, // anonymous union at byte 8
            off("bits"),
            1,
            (3 << 24) | 32,
            off("c"),
            1,
            96,
            // 3: anonymous union { int b; char *p; }, size 8
            0,
            info(KIND_UNION, 2, false),
            8,
            off("b"),
            1,
            0,
            off("p"),
            4,
            0,
            // 4: char *
            0,
            info(KIND_PTR, 0, false),
            5,
            // 5: char
            off("char"),
            info(KIND_INT, 0, false),
            1,
            8,
            // 6: enum color (signed), 2 enumerators
            off("color"),
            info(KIND_ENUM, 2, true),
            4,
            off("RED"),
            u32::MAX,
            off("GREEN"),
            7,
            // 7: typedef struct outer outer_t
            off("outer_t"),
            info(KIND_TYPEDEF, 0, false),
            2,
        ];
        blob(&types, strings)
    }

    #[test]
    fn tiny_member_offsets() {
        let btf = KernelBtf::parse(tiny()).expect("tiny BTF parses");
        assert_eq!(btf.member_offset("outer", "a").expect("a"), 0);
        assert_eq!(btf.member_size("outer", "a").expect("a"), 4);
        assert_eq!(btf.member_offset("outer", "b").expect("b"), 8);
        assert_eq!(btf.member_offset("outer", "p").expect("p"), 8);
        assert_eq!(btf.member_size("outer", "p").expect("p"), 8);
        assert_eq!(btf.member_offset("outer", "c").expect("c"), 12);
        assert_eq!(btf.member_offset("outer_t", "p").expect("typedef"), 8);
        assert!(matches!(btf.member_offset("outer", "bits"), Err(BtfError::Bitfield { .. })));
        assert!(matches!(btf.member_offset("outer", "zzz"), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.member_offset("nope", "a"), Err(BtfError::NoType { .. })));
        assert!(matches!(btf.member_offset("color", "a"), Err(BtfError::NoType { .. })));
    }

    #[test]
    fn tiny_enum_values() {
        let btf = KernelBtf::parse(tiny()).expect("tiny BTF parses");
        assert_eq!(
            btf.enum_values("color").expect("color"),
            vec![("RED".to_owned(), -1), ("GREEN".to_owned(), 7)]
        );
        assert!(matches!(btf.enum_values("outer"), Err(BtfError::NoEnum { .. })));
        assert!(format!("{btf:?}").contains("types: 7"));
    }

    #[test]
    fn malformed_input() {
        let good = tiny();
        assert!(matches!(KernelBtf::parse(Vec::new()), Err(BtfError::Malformed { .. })));

        let mut bad_magic = good.clone();
        bad_magic[0] = 0;
        let err = KernelBtf::parse(bad_magic).expect_err("bad magic");
        assert!(err.to_string().contains("magic"), "{err}");

        let mut big_endian = good.clone();
        big_endian.swap(0, 1);
        let err = KernelBtf::parse(big_endian).expect_err("big-endian");
        assert!(err.to_string().contains("big-endian"), "{err}");

        for len in [3, 20, 24, 40, good.len() - 1] {
            let err = KernelBtf::parse(good[..len].to_vec()).expect_err("truncated");
            assert!(matches!(err, BtfError::Malformed { .. }), "{len}: {err}");
        }

        // A type section that ends in the middle of a struct's members.
        let mut cut = good.clone();
        let type_len = 40u32; // int (16 bytes) + struct header + 1 member + part of another
        cut[12..16].copy_from_slice(&type_len.to_le_bytes());
        let err = KernelBtf::parse(cut).expect_err("truncated type");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn an_unknown_kind_ends_the_walk_and_keeps_what_came_before() {
        // Kind 20 in place of type 2 (struct outer): only the int before it remains.
        let mut early = tiny();
        early[24 + 16 + 4..24 + 16 + 8].copy_from_slice(&info(20, 0, false).to_le_bytes());
        let btf = KernelBtf::parse(early).expect("a BTF with a kind-20 type still parses");
        assert_eq!(btf.unknown_kind, Some((20, 2)));
        assert_eq!(btf.type_offsets.len(), 1);
        assert!(matches!(btf.member_offset("outer", "a"), Err(BtfError::NoType { .. })));

        // Kind 20 after the seven types of `tiny`, then a struct `late` the walk never reaches.
        let mut data = tiny();
        let type_len = u32::from_le_bytes(data[12..16].try_into().expect("4 bytes"));
        let strings = data.split_off(24 + type_len as usize);
        let late = u32::try_from(strings.len()).expect("small");
        let mut appended = Vec::new();
        for word in [0, info(20, 3, false), 0, late, info(KIND_STRUCT, 0, false), 4] {
            appended.extend_from_slice(&u32::to_le_bytes(word));
        }
        data.extend_from_slice(&appended);
        data.extend_from_slice(&strings);
        data.extend_from_slice(b"late\0");
        let added = u32::try_from(appended.len()).expect("small");
        for (at, grows) in [(12, added), (16, added), (20, 5)] {
            let field = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
            data[at..at + 4].copy_from_slice(&(field + grows).to_le_bytes());
        }
        let btf = KernelBtf::parse(data).expect("a BTF with a kind-20 type still parses");
        assert_eq!(btf.unknown_kind, Some((20, 8)));
        assert_eq!(btf.type_offsets.len(), 7);
        assert_eq!(btf.member_offset("outer", "c").expect("c"), 12);
        assert_eq!(btf.member_offset("outer_t", "p").expect("typedef"), 8);
        assert_eq!(
            btf.enum_values("color").expect("color"),
            vec![("RED".to_owned(), -1), ("GREEN".to_owned(), 7)]
        );
        assert!(matches!(btf.member_offset("late", "a"), Err(BtfError::NoType { .. })));
        assert!(format!("{btf:?}").contains("unknown_kind: Some((20, 8))"), "{btf:?}");
    }
}
