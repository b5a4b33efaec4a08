//! Compiles `csrc/dist.cpp` (c10d) and `csrc/ops.cpp` (the profile's op counter) against the
//! headers of the libtorch torch-sys found and links.
//! libtorch's wheel ships c10d's headers but not Gloo's, which `ProcessGroupGloo.hpp` includes:
//! the few Gloo headers it needs are vendored under `csrc/third_party` (BSD, see its LICENSE).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-changed=csrc/ops.cpp");
    println!("cargo:rerun-if-changed=csrc/third_party");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys reports where libtorch is (DEP_TCH_LIBTORCH_LIB)"),
    );
    let root = lib.parent().expect("libtorch's lib dir has a parent");
    let include = root.join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .std("c++20")
        .define("USE_C10D_GLOO", None)
        .define("GLOG_USE_GLOG_EXPORT", None)
        .include("csrc/third_party")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .file("csrc/dist.cpp")
        .file("csrc/ops.cpp")
        .compile("tailor_dist");
}
