# moat's native module `_moat` for make ports (unix, qemu, esp8266):
# `moat build` passes USER_C_MODULES=<folder holding this one>.
MOAT_MOD_DIR := $(USERMOD_DIR)
SRC_USERMOD_C += $(MOAT_MOD_DIR)/moat_native.c
