/* Shared by config.c (the schema and the parse) and config-files.c (the
 * files it names, told apart). */
#pragma once

#include "config.h"
#include "yamlread.h"

/* The state and metrics files may be neither the policy file, a token
 * file, the running policy's copy, nor (metrics) a state file or its lock:
 * an error at the key that names them for each clash. */
void config_check_distinct_files(struct yaml_reader *p, yaml_node_t *root, const struct config *c);
