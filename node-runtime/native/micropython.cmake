# moat's native module `_moat` for cmake ports (rp2, esp32): `moat build`
# passes USER_C_MODULES=<the micropython.cmake one folder up>, which
# includes this file.
add_library(usermod_moat INTERFACE)
target_sources(usermod_moat INTERFACE ${CMAKE_CURRENT_LIST_DIR}/moat_native.c)
target_include_directories(usermod_moat INTERFACE ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(usermod INTERFACE usermod_moat)
