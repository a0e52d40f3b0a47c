/* Reference for bench/milter_cost.py: the cheapest milter libmilter allows.
 *
 * It negotiates exactly what sendpost-agent's milter does (DATA answered, headers
 * without reply, end-of-message with macro i, every other step skipped) and does
 * nothing else: its cost is the floor any milter built on libmilter (pymilter
 * included) pays on this host. Build: gcc -O2 noop_libmilter.c -lmilter -pthread
 * Run: noop_libmilter unix:/path/to/socket
 */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <string.h>

static sfsistat on_header(SMFICTX *ctx, char *name, char *value) { return SMFIS_NOREPLY; }
static sfsistat on_data(SMFICTX *ctx) { return SMFIS_CONTINUE; }
static sfsistat on_eom(SMFICTX *ctx)
{
	(void) smfi_getsymval(ctx, "i");
	return SMFIS_ACCEPT;
}

static sfsistat on_negotiate(SMFICTX *ctx, unsigned long actions, unsigned long steps,
			     unsigned long f2, unsigned long f3, unsigned long *pactions,
			     unsigned long *psteps, unsigned long *pf2, unsigned long *pf3)
{
	*pactions = actions & SMFIF_SETSYMLIST;
	*psteps = steps & (SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT
			   | SMFIP_NOEOH | SMFIP_NOBODY | SMFIP_NOUNKNOWN | SMFIP_NR_HDR);
	*pf2 = *pf3 = 0;
	(void) smfi_setsymlist(ctx, SMFIM_EOM, "i");
	return SMFIS_CONTINUE;
}

int main(int argc, char **argv)
{
	struct smfiDesc desc;

	if (argc != 2) {
		fprintf(stderr, "usage: %s unix:/path/to/socket\n", argv[0]);
		return 2;
	}
	memset(&desc, 0, sizeof desc);
	desc.xxfi_name = "noop-libmilter";
	desc.xxfi_version = SMFI_VERSION;
	desc.xxfi_flags = SMFIF_SETSYMLIST;
	desc.xxfi_header = on_header;
	desc.xxfi_data = on_data;
	desc.xxfi_eom = on_eom;
	desc.xxfi_negotiate = on_negotiate;
	if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_register(desc) == MI_FAILURE
	    || smfi_opensocket(1) == MI_FAILURE) {
		fprintf(stderr, "%s: cannot listen on %s\n", argv[0], argv[1]);
		return 1;
	}
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}
