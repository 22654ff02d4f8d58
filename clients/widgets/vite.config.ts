import { defineConfig } from "vite";

// One self-contained script (lit and the client bundled), runnable as a classic or a module script.
export default defineConfig({
  build: {
    lib: {
      entry: "src/index.ts",
      formats: ["iife"],
      name: "TollgateWidgets",
      fileName: () => "tollgate.js",
    },
    // Committed: the control plane serves it at /widgets/v1/tollgate.js (include_bytes!).
    outDir: "../../control-plane/assets/widgets/v1",
    emptyOutDir: true,
    target: "es2022",
    minify: true,
    sourcemap: false,
  },
});
