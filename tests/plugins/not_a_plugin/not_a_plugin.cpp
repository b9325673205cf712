// A shared library that is not a plexus plugin: it exports neither entry symbol.
extern "C" __attribute__((visibility("default"))) int some_function() { return 42; }
