// libFuzzer's driver, called from each fuzz target's own entry point (SwiftPM names an executable's entry
// point itself, so libFuzzer's `main` is not the one that runs).
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

/// Runs libFuzzer over `callback` with the program's arguments: a fuzz target's whole `main`.
int fuzz_main(int argc, char **argv, int (*callback)(const uint8_t *data, size_t size));
