// The emulator's stand-in for CUDA's header: the 16-bit types are in emu_device.h.
#pragma once
#include "../emu_device.h"
