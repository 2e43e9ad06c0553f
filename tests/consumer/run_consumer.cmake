# cmake -DMODE=find_package|add_subdirectory ... -P run_consumer.cmake
#
# Configures and builds one consumer project from scratch, the way a user
# would, with the same compiler/generator/build type as the keypool build.
# For MODE=find_package, keypool is first installed into a private prefix.

function(run)
  string(REPLACE ";" " " pretty "${ARGN}")
  message(STATUS "+ ${pretty}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${pretty}")
  endif()
endfunction()

if(NOT CONSUMER_BUILD_TYPE)
  set(CONSUMER_BUILD_TYPE Release)
endif()
set(build_dir "${CONSUMER_WORK_DIR}/consumer-${MODE}")
file(REMOVE_RECURSE "${build_dir}") # a stale cache could hide a broken package

set(configure_args
  -S "${CONSUMER_SOURCE_ROOT}/${MODE}" -B "${build_dir}"
  -G "${CONSUMER_GENERATOR}"
  "-DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER}"
  "-DCMAKE_BUILD_TYPE=${CONSUMER_BUILD_TYPE}")

if(MODE STREQUAL "find_package")
  set(prefix "${CONSUMER_WORK_DIR}/consumer-prefix")
  file(REMOVE_RECURSE "${prefix}")
  run("${CMAKE_COMMAND}" --install "${KEYPOOL_BINARY_DIR}" --prefix "${prefix}" --config "${CONSUMER_BUILD_TYPE}")
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${prefix}" "-DKEYPOOL_EXPECT_PQ=${KEYPOOL_WITH_PQ}")
elseif(MODE STREQUAL "add_subdirectory")
  list(APPEND configure_args "-DKEYPOOL_SOURCE_DIR=${KEYPOOL_SOURCE_DIR}")
else()
  message(FATAL_ERROR "unknown MODE '${MODE}'")
endif()

run("${CMAKE_COMMAND}" ${configure_args})
run("${CMAKE_COMMAND}" --build "${build_dir}" --config "${CONSUMER_BUILD_TYPE}")

# Run what was built: the headers must not only compile but work.
foreach(exe consumer consumer_pq)
  if(EXISTS "${build_dir}/${exe}")
    run("${build_dir}/${exe}")
  elseif(exe STREQUAL "consumer")
    message(FATAL_ERROR "consumer executable not built")
  endif()
endforeach()
if(KEYPOOL_WITH_PQ AND NOT EXISTS "${build_dir}/consumer_pq")
  message(FATAL_ERROR "keypool was built with pq, but the consumer's pq program was not")
endif()
