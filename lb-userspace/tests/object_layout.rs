//! The embedded object and the agent agree by test, not by hand:
//! every map of `lb_common::layout::MAPS` is in the object with its kind,
//! key and value sizes, flags and capacity. Parses the object with aya-obj;
//! needs no root and no kernel.

use lb_common::layout::MAPS;

#[test]
fn every_map_the_agent_uses_is_in_the_object_as_declared() {
    let object = aya_obj::Object::parse(lb_userspace::dataplane::object::object())
        .expect("the object parses");
    for spec in MAPS {
        let map = object
            .maps
            .get(spec.name)
            .unwrap_or_else(|| panic!("map {} missing from the object", spec.name));
        assert_eq!(map.map_type(), spec.kind as u32, "{}: kind", spec.name);
        assert_eq!(map.key_size(), spec.key_size, "{}: key size", spec.name);
        assert_eq!(
            map.value_size(),
            spec.value_size,
            "{}: value size",
            spec.name
        );
        assert_eq!(map.map_flags(), spec.flags, "{}: flags", spec.name);
        if let Some(entries) = spec.max_entries {
            assert_eq!(map.max_entries(), entries, "{}: capacity", spec.name);
        }
    }
    for program in ["xdp_lb", lb_common::PROGRAM_LB_V6, "xdp_decap"] {
        assert!(
            object.programs.contains_key(program),
            "program {program} in the object"
        );
    }
}
