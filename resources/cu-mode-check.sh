#!/bin/sh
# Fail the content build early when the AO compute unit's source does not
# accept the configured UNIT_MODE (content.cu_env). The CU validates it at
# start with zod (servers/cu/src/config.js: `UNIT_MODE: z.enum([...])`); a
# source without that line knows no unit modes at all (ao's main branch has
# only cu/ru behaviour and no HB_URL).
#   cu-mode-check.sh CU_DIR MODE
set -eu
CU="${1:?usage: cu-mode-check.sh CU_DIR MODE}"
MODE="${2:?usage: cu-mode-check.sh CU_DIR MODE}"
CONFIG="$CU/src/config.js"
if [ ! -f "$CONFIG" ]; then
    echo "cu-mode-check: $CONFIG does not exist: not an AO compute unit source" >&2
    exit 1
fi
MODES=$(tr '\n' ' ' < "$CONFIG" | grep -o "UNIT_MODE: *z\.enum( *\[[^]]*\]" | head -n 1 \
        | sed -e "s/.*\[//" -e "s/\]//" -e "s/[\"' ]//g")
if [ -z "$MODES" ]; then
    echo "cu-mode-check: $CONFIG declares no UNIT_MODE; UNIT_MODE=$MODE needs a CU that does" \
         "(set content.ao_ref to a branch with unit modes, e.g. hb-os's)" >&2
    exit 1
fi
case ",$MODES," in
    *",$MODE,"*) echo "cu-mode-check: UNIT_MODE=$MODE is one of $MODES" ;;
    *) echo "cu-mode-check: UNIT_MODE=$MODE is not accepted by $CONFIG (it accepts: $MODES)" >&2
       exit 1 ;;
esac
