# Runs one libFuzzer target for a bounded time over a writable corpus
# (the CTest tests fuzz_*_run; see CMakeLists.txt).
#   cmake -DFUZZER=<exe> -DSEEDS=<seed dir> -DWORK=<scratch dir> -DSECONDS=<n>
#         -P run_fuzzer.cmake
# The seeds are copied into WORK/corpus (whatever the fuzzer added there
# on earlier runs stays). The whole libFuzzer output goes to WORK/fuzz.log;
# the final statistics (exec count, rate, corpus growth, peak RSS) are
# printed, and on failure the end of the log, which names the crash input
# libFuzzer saved in WORK.

foreach(_var FUZZER SEEDS WORK SECONDS)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "run_fuzzer.cmake: -D${_var}=... is required")
  endif()
endforeach()

file(MAKE_DIRECTORY "${WORK}/corpus")
file(GLOB _seeds "${SEEDS}/*")
if(NOT _seeds)
  message(FATAL_ERROR "run_fuzzer.cmake: no seed files in ${SEEDS}")
endif()
file(COPY ${_seeds} DESTINATION "${WORK}/corpus"
     FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
file(GLOB _before "${WORK}/corpus/*")
list(LENGTH _before _nbefore)

get_filename_component(_name "${FUZZER}" NAME)
message("${_name}: ${SECONDS} s over ${WORK}/corpus (${_nbefore} files)")
execute_process(
  COMMAND "${FUZZER}" -max_total_time=${SECONDS} -print_final_stats=1
          "-artifact_prefix=${WORK}/" "${WORK}/corpus"
  WORKING_DIRECTORY "${WORK}"
  RESULT_VARIABLE _rc
  OUTPUT_VARIABLE _out
  ERROR_VARIABLE _out)
file(WRITE "${WORK}/fuzz.log" "${_out}")

# libFuzzer's closing lines: "Done N runs in S second(s)" and stat::*.
string(REGEX MATCHALL "Done [0-9]+ runs in [0-9]+ second\\(s\\)|stat::[a-z_]+: *[0-9]+"
       _stats "${_out}")
foreach(_line IN LISTS _stats)
  message("${_name}: ${_line}")
endforeach()
file(GLOB _after "${WORK}/corpus/*")
list(LENGTH _after _nafter)
message("${_name}: corpus ${_nbefore} -> ${_nafter} files; full log ${WORK}/fuzz.log")

if(NOT _rc EQUAL 0)
  # The crash report is at the end of the log.
  string(LENGTH "${_out}" _len)
  if(_len GREATER 12000)
    math(EXPR _from "${_len} - 12000")
    string(SUBSTRING "${_out}" ${_from} -1 _tail)
  else()
    set(_tail "${_out}")
  endif()
  message("${_tail}")
  message(FATAL_ERROR "${_name} failed (exit ${_rc}); the input that failed is saved "
                      "in ${WORK} (crash-*, leak-*, timeout-* or oom-*)")
endif()
