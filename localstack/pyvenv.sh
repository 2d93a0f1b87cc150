#!/usr/bin/env bash
# Sourced, not run: `pyvenv_install VENV LABEL FILE... [-- PIP_ARGS...]` creates or refreshes the
# virtual environment VENV from pinned requirement files, each FILE a requirements file (`-r`)
# or, when its name contains "constraints", a constraints file (`-c`). A stamp holding the files'
# hash makes a second call free until one of them changes. PYTHON picks the interpreter.
# Every Python tool of the project (LocalStack, moto, cfn-lint, shellcheck, schemathesis) is
# installed this way, each in a venv of its own beside the files that pin it.

pyvenv_install() {
  local venv=$1 label=$2
  shift 2
  local files=() pip_args=()
  while (($#)); do
    if [[ $1 == -- ]]; then
      shift
      pip_args=("$@")
      break
    fi
    files+=("$1")
    shift
  done
  local stamp="$venv/.installed" want
  want=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  echo "$label: creating virtual environment in $venv" >&2
  "${PYTHON:-python3}" -m venv "$venv"
  local args=() file
  for file in "${files[@]}"; do
    if [[ $(basename "$file") == *constraints* ]]; then args+=(-c "$file"); else args+=(-r "$file"); fi
  done
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pip_args[@]}" "${args[@]}"
  echo "$want" >"$stamp"
}
