//! Host-side bindings of the `step` world (`wit/step.wit`).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "step",
    imports: { default: trappable },
    exports: { default: async },
});
