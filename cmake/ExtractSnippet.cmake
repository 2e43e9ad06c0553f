# keypool_extract_snippet(<readme> <heading> <output> <result-var>)
#
# Copies the first ```cpp fenced block found under the Markdown heading
# <heading> (e.g. "## Quick start", up to the next heading of the same level)
# into <output>, so the README's code is compiled and run as a test and cannot
# silently rot. Sets <result-var> to TRUE if a block was found, FALSE otherwise.
#
# The file is read whole with file(READ) rather than file(STRINGS): C++ is full
# of ';' and '[', which CMake lists would split or mangle line by line.
function(keypool_extract_snippet readme heading output result_var)
  set(${result_var} FALSE PARENT_SCOPE)

  file(READ "${readme}" text)
  string(REPLACE "\r\n" "\n" text "${text}")
  # A leading newline lets "\n<heading>" match on the very first line too.
  set(text "\n${text}")

  string(FIND "${text}" "\n${heading}\n" heading_pos)
  if(heading_pos EQUAL -1)
    return()
  endif()
  string(LENGTH "\n${heading}" heading_len)
  math(EXPR body_pos "${heading_pos} + ${heading_len}")
  string(SUBSTRING "${text}" ${body_pos} -1 body)

  # The section ends at the next heading of the same level ("## " vs "### ").
  string(REGEX MATCH "^#+ " level "${heading}")
  if(level)
    string(FIND "${body}" "\n${level}" next_heading)
    if(NOT next_heading EQUAL -1)
      string(SUBSTRING "${body}" 0 ${next_heading} body)
    endif()
  endif()

  string(FIND "${body}" "\n```cpp\n" open_pos)
  if(open_pos EQUAL -1)
    return()
  endif()
  math(EXPR code_pos "${open_pos} + 8") # strlen("\n```cpp\n")
  string(SUBSTRING "${body}" ${code_pos} -1 code)
  string(FIND "${code}" "\n```" close_pos)
  if(close_pos EQUAL -1)
    return()
  endif()
  string(SUBSTRING "${code}" 0 ${close_pos} code)

  # Point compiler diagnostics at README.md itself rather than the copy.
  math(EXPR prefix_len "${body_pos} + ${code_pos}")
  string(SUBSTRING "${text}" 0 ${prefix_len} prefix)
  string(REGEX MATCHALL "\n" newlines "${prefix}")
  list(LENGTH newlines first_line) # text has one extra leading "\n", so this is 1-based already
  set(content "#line ${first_line} \"${readme}\"\n${code}\n")

  # Only touch the file when it changes, so re-configuring doesn't force a rebuild.
  set(old "")
  if(EXISTS "${output}")
    file(READ "${output}" old)
  endif()
  if(NOT "${old}" STREQUAL "${content}")
    file(WRITE "${output}" "${content}")
  endif()
  set(${result_var} TRUE PARENT_SCOPE)
endfunction()
