import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The tests talk to a running stack (see test/stack.ts); one file at a time keeps them independent.
    fileParallelism: false,
    testTimeout: 20_000,
  },
});
