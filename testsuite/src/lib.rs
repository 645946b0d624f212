//! File-driven test harness for the Jalapeño toolchain (see docs/testing.md).
