//! The running kernel's layout as wgtel reads it from BTF, checked against other readers of
//! the same kernel: `pahole` (dwarves) on `/sys/kernel/btf/vmlinux` for every struct member the
//! drop program is loaded with, and the `skb:kfree_skb` tracepoint's format (tracefs, root)
//! for the drop-reason names. Nothing here is a constant of one kernel: run on any kernel, it
//! compares wgtel with that kernel.

#![expect(clippy::unwrap_used, reason = "a test helper that fails fails its test")]

use std::{collections::BTreeMap, fs, path::Path, process::Command};

use wgtel::ebpf::DropLayout;

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const KFREE_SKB_FORMAT: &str = "/sys/kernel/tracing/events/skb/kfree_skb/format";

/// The global of the drop program, the struct and the member whose byte offset it holds.
const MEMBERS: [(&str, &str, &str); 7] = [
    ("SKB_DEV", "sk_buff", "dev"),
    ("SKB_IIF", "sk_buff", "skb_iif"),
    ("SKB_LEN", "sk_buff", "len"),
    ("SKB_HEAD", "sk_buff", "head"),
    ("SKB_NETWORK_HEADER", "sk_buff", "network_header"),
    ("NET_DEVICE_IFINDEX", "net_device", "ifindex"),
    ("NET_DEVICE_NET", "net_device", "nd_net"),
];

/// `pahole -C STRUCT` on the kernel's BTF: member name -> (offset, size) in bytes, members of
/// anonymous structs and unions included (pahole prints their offsets from the outer struct),
/// bitfields left out.
fn pahole(structure: &str) -> BTreeMap<String, (u32, u32)> {
    let out = Command::new("pahole")
        .args(["-F", "btf", "-C", structure, VMLINUX])
        .output()
        .expect("pahole runs: `cargo xtask setup` installs dwarves");
    assert!(
        out.status.success(),
        "pahole -C {structure}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut members = BTreeMap::new();
    for line in text.lines() {
        // `\tstruct net_device * dev; /*    16     8 */`
        let Some((declaration, comment)) = line.split_once(";") else { continue };
        let Some(numbers) = comment.trim().strip_prefix("/*").and_then(|c| c.strip_suffix("*/"))
        else {
            continue;
        };
        let numbers: Vec<&str> = numbers.split_whitespace().collect();
        let [offset, size] = numbers[..] else { continue };
        let (Ok(offset), Ok(size)) = (offset.parse(), size.parse()) else { continue };
        let name = declaration.rsplit([' ', '\t', '*']).next().unwrap();
        if !name.is_empty() && !name.contains(['(', ')', '[', ':']) {
            members.entry(name.to_owned()).or_insert((offset, size));
        }
    }
    assert!(members.len() > 3, "pahole -C {structure} printed no members:\n{text}");
    members
}

/// The `{ VALUE, "NAME" }` pairs of the `__print_symbolic` of the tracepoint's print format.
fn tracepoint_reasons() -> BTreeMap<u32, String> {
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let status = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status()
            .unwrap();
        assert!(status.success(), "mounting tracefs: {status}");
    }
    let format = fs::read_to_string(KFREE_SKB_FORMAT).unwrap();
    let print = format.split("print fmt:").nth(1).expect("a print fmt line");
    let symbolic = print.split("__print_symbolic").nth(1).expect("the reasons' symbolic names");
    symbolic
        .split('{')
        .skip(1)
        .map(|pair| {
            let pair = pair.split('}').next().unwrap();
            let (value, name) = pair.split_once(',').unwrap();
            (value.trim().parse().unwrap(), name.trim().trim_matches('"').to_owned())
        })
        .collect()
}

#[test]
fn member_offsets_match_pahole() {
    let layout = DropLayout::from_kernel().expect("this kernel has BTF");
    let mut structs = BTreeMap::new();
    for (global, structure, member) in MEMBERS {
        let members = structs.entry(structure).or_insert_with(|| pahole(structure));
        let (offset, _) = members[member];
        assert_eq!(layout.global(global), Some(offset), "{global}: {structure}.{member}");
    }
    // `net.ns.inum`: two members, one offset.
    let (ns, _) = pahole("net")["ns"];
    let (inum, size) = pahole("ns_common")["inum"];
    assert_eq!(size, 4);
    assert_eq!(layout.global("NET_NS_INUM"), Some(ns + inum));
    eprintln!(
        "sk_buff.dev at {:?}, net_device.ifindex at {:?}, net.ns.inum at {}",
        layout.global("SKB_DEV"),
        layout.global("NET_DEVICE_IFINDEX"),
        ns + inum
    );
}

#[test]
fn drop_reasons_match_the_tracepoint_format() {
    let layout = DropLayout::from_kernel().expect("this kernel has BTF");
    let mut expected = tracepoint_reasons();
    // The enum's end marker is printed too; wgtel leaves it out of the reasons.
    assert_eq!(expected.pop_last().map(|(_, name)| name).as_deref(), Some("MAX"));
    let first = expected.iter().find(|(_, name)| *name == "NOT_SPECIFIED").map(|(value, _)| *value);
    assert_eq!(layout.global("FIRST_DROP_REASON"), first);
    assert_eq!(expected.first_key_value().map(|(value, _)| *value), first);
    let names: BTreeMap<u32, String> = layout
        .reason_names()
        .expect("this kernel names its drop reasons")
        .clone()
        .into_iter()
        .collect();
    assert_eq!(names, expected);
    eprintln!("{} drop reasons, the first {first:?}", names.len());
}
