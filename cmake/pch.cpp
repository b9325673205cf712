// Exists so that CMake has something to compile the shared torch precompiled header with.
