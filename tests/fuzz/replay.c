/* SPDX-License-Identifier: MIT */
/* Replay main for the fuzz targets in the normal build: runs every file named (or in a directory named) through LLVMFuzzerTestOneInput once. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional, as with libFuzzer. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* Reads path whole into a buffer of exactly its size (malloc'd, so that ASan sees an
 * overrun by one byte); *len gets the size. NULL on error (errno set). */
static uint8_t *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *p = NULL;
	long n;

	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
	    (p = malloc(n ? (size_t)n : 1)) && fread(p, 1, (size_t)n, f) == (size_t)n) {
		*len = (size_t)n;
		fclose(f);
		return p;
	}
	free(p);
	fclose(f);
	errno = EIO;
	return NULL;
}

static int run_file(const char *path)
{
	size_t len;
	uint8_t *p = slurp(path, &len);

	if (!p) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
		return -1;
	}
	LLVMFuzzerTestOneInput(p, len);
	free(p);
	return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

/* Every regular file of dir, in name order (so that a failure replays the same). */
static int run_dir(const char *dir, unsigned *n)
{
	struct dirent **ents;
	int m = scandir(dir, &ents, NULL, by_name), bad = 0;

	if (m < 0) {
		fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
		return -1;
	}
	for (int i = 0; i < m; i++) {
		char path[4096];
		struct stat st;

		snprintf(path, sizeof(path), "%s/%s", dir, ents[i]->d_name);
		if (ents[i]->d_name[0] != '.' && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
			bad |= run_file(path) < 0;
			++*n;
		}
		free(ents[i]);
	}
	free(ents);
	return bad ? -1 : 0;
}

int main(int argc, char **argv)
{
	unsigned n = 0;
	int bad = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
		return 2;
	}
	if (LLVMFuzzerInitialize)
		LLVMFuzzerInitialize(&argc, &argv);
	for (int i = 1; i < argc; i++) {
		struct stat st;

		if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode))
			bad |= run_dir(argv[i], &n) < 0;
		else {
			bad |= run_file(argv[i]) < 0;
			n++;
		}
	}
	printf("replayed %u inputs\n", n);
	if (n == 0) {
		fprintf(stderr, "replay: no inputs\n");
		return 1;
	}
	return bad ? 1 : 0;
}
