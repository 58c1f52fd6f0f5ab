// An event with a `custom` upcast step needs its `<Event>Upcast` implementation: without
// one the generated code does not compile.
include!("generated/custom_upcast.rs");

fn main() {}
