//! No byte loops on the fast path: `xdp_lb` must not call the
//! compiler's `memset`, `memcpy`, `memmove` or `memcmp`, which the BPF
//! backend emits as subprograms that move one byte per iteration (slow,
//! and long for the verifier). Reads the relocations of the embedded
//! object's program sections with the `object` crate; needs no root.

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

/// The compiler's memory builtins.
const BYTE_LOOPS: [&str; 4] = ["memset", "memcpy", "memmove", "memcmp"];

/// Calls of the builtins from `section`: (offset, symbol).
fn builtin_calls(file: &object::File<'_>, section: &str) -> Vec<(u64, String)> {
    let section = file
        .section_by_name(section)
        .unwrap_or_else(|| panic!("section {section} in the object"));
    section
        .relocations()
        .filter_map(|(offset, reloc)| match reloc.target() {
            RelocationTarget::Symbol(index) => {
                let name = file.symbol_by_index(index).ok()?.name().ok()?.to_string();
                BYTE_LOOPS
                    .contains(&name.as_str())
                    .then_some((offset, name))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn xdp_lb_calls_no_memset_memcpy_or_memmove() {
    assert_no_byte_loops(lb_userspace::dataplane::object::object());
}

/// The benchmark's wrapper restores the frame before every repetition: a
/// byte loop there would make the floor every row subtracts noisy.
#[test]
fn the_bench_wrapper_calls_no_memset_memcpy_or_memmove() {
    assert_no_byte_loops(lb_userspace::dataplane::object::bench_object());
}

fn assert_no_byte_loops(bytes: &[u8]) {
    let file = object::File::parse(bytes).expect("the object parses");
    // The scan means something: the builtins are in the object (the BPF
    // backend links them into `.text` whether called or not) and the
    // program sections' relocations are read (map references at least).
    for builtin in BYTE_LOOPS {
        assert!(
            file.symbols().any(|s| s.name() == Ok(builtin)),
            "{builtin} in the symbol table"
        );
    }
    let xdp = file.section_by_name("xdp").expect("section xdp");
    assert!(xdp.relocations().count() > 0, "relocations of xdp read");
    // The programs' section and `.text`, where their subprograms live.
    for section in ["xdp", ".text"] {
        let calls = builtin_calls(&file, section);
        assert!(
            calls.is_empty(),
            "{section} calls byte loops (offset, builtin): {calls:?}; build keys and \
             helper arguments with word stores"
        );
    }
}
