/*
 * Command protocol of the uafp-led firmware: line assembly, parsing and the command
 * handlers of the illuminate-compatible command set. No LED or pin code lives here.
 *
 * Framing: ASCII lines ending in '\n' ('\r' is ignored), arguments separated by '.',
 * every reply ends with the line "-==-", errors are one line starting "ERROR".
 * Anything malformed (unknown command, bad number, too many arguments, over-long line,
 * non-printable bytes) is answered with an ERROR and leaves the state untouched.
 */
#include "protocol.h"

#include <stdlib.h>
#include <string.h>

#ifdef __AVR__
#include <avr/pgmspace.h>
#else
#define PSTR(s) (s)
#define strcmp_P strcmp
#endif

#define BITMAP_BYTES ((LED_COUNT + 7) / 8)

static char line_buffer[LINE_MAX_CHARS + 1];
static uint8_t line_length;
static uint8_t line_overflow;
static uint8_t line_binary;

static uint8_t lit_bitmap[BITMAP_BYTES];
static uint8_t color_rgb[3];
static uint8_t brightness_rgb[3];
static uint8_t na_x100;
static uint16_t distance_mm;
static uint8_t auto_clear;
static uint8_t auto_trigger;
static uint16_t trigger_delay_us;
static uint16_t trigger_width_us;

static uint16_t sequence[SEQUENCE_MAX];
static uint16_t sequence_length;
static uint16_t sequence_loaded;
static uint16_t sequence_position;
static uint8_t sequence_armed;

/* ---- small output helpers ------------------------------------------------------ */

static void write_uint(uint32_t value) {
    char digits[11];
    char *p = digits + sizeof(digits) - 1;
    *p = '\0';
    do {
        *--p = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    hal_write(p);
}

static void write_key_uint(const char *key_P, uint32_t value) {
    hal_write_P(key_P);
    write_uint(value);
}

static void end_reply(void) { hal_write_P(PSTR("-==-\n")); }

static void error_P(const char *message_P) {
    hal_write_P(PSTR("ERROR: "));
    hal_write_P(message_P);
    hal_write_P(PSTR("\n"));
}

/* ---- state helpers ----------------------------------------------------------------- */

uint8_t protocol_led_lit(uint16_t index) {
    if (index >= LED_COUNT) return 0;
    return (lit_bitmap[index >> 3] >> (index & 7)) & 1;
}

void protocol_output_rgb(uint8_t rgb[3]) {
    for (uint8_t i = 0; i < 3; ++i) {
        rgb[i] = (uint8_t)(((uint16_t)color_rgb[i] * brightness_rgb[i] + 127) / 255);
    }
}

static void set_lit(uint16_t index) { lit_bitmap[index >> 3] |= (uint8_t)(1 << (index & 7)); }

static void clear_bitmap(void) { memset(lit_bitmap, 0, sizeof(lit_bitmap)); }

static void display(uint8_t pulse) {
    hal_show();
    if (pulse) hal_trigger_pulse(trigger_delay_us, trigger_width_us);
}

static void reset_state(void) {
    clear_bitmap();
    for (uint8_t i = 0; i < 3; ++i) {
        color_rgb[i] = 255;
        brightness_rgb[i] = LED_DEFAULT_BRIGHTNESS;
    }
    na_x100 = LED_DEFAULT_NA_X100;
    distance_mm = LED_DISTANCE_MM;
    auto_clear = 1;
    auto_trigger = 0;
    trigger_delay_us = 0;
    trigger_width_us = 500;
    sequence_length = 0;
    sequence_loaded = 0;
    sequence_position = 0;
    sequence_armed = 0;
}

/* sin^2 of the illumination angle of LED (row, col) compared with NA^2: returns -1, 0, 1. */
static int8_t compare_led_na(uint16_t index, uint8_t limit_x100) {
    int16_t drow_x2 = (int16_t)(2 * (index / LED_COLS)) - LED_CENTER_ROW_X2;
    int16_t dcol_x2 = (int16_t)(2 * (index % LED_COLS)) - LED_CENTER_COL_X2;
    float pitch_mm = LED_PITCH_UM / 1000.0f;
    float radial2_mm2 = ((float)drow_x2 * drow_x2 + (float)dcol_x2 * dcol_x2) * 0.25f * pitch_mm * pitch_mm;
    float z_mm = (float)distance_mm;
    float sin2 = radial2_mm2 / (radial2_mm2 + z_mm * z_mm);
    float limit2 = (limit_x100 / 100.0f) * (limit_x100 / 100.0f);
    /* Equal within float precision counts as inside, so LEDs exactly on the rim are bright. */
    if (sin2 <= limit2 * 1.000001f) return sin2 < limit2 * 0.999999f ? -1 : 0;
    return 1;
}

/* ---- parsing ------------------------------------------------------------------------ */

/* Strict unsigned decimal: digits only, at most 5, value <= max. Returns 1 on success. */
static uint8_t parse_uint(const char *text, uint16_t max, uint16_t *out) {
    uint32_t value = 0;
    uint8_t count = 0;
    if (*text == '\0') return 0;
    for (; *text; ++text) {
        if (*text < '0' || *text > '9' || ++count > 5) return 0;
        value = value * 10 + (uint32_t)(*text - '0');
    }
    if (value > max) return 0;
    *out = (uint16_t)value;
    return 1;
}

static uint8_t parse_all(char **args, uint8_t count, uint16_t max, uint16_t *out) {
    for (uint8_t i = 0; i < count; ++i) {
        if (!parse_uint(args[i], max, &out[i])) return 0;
    }
    return 1;
}

/* ---- commands ------------------------------------------------------------------------ */

static void print_about(void) {
    hal_write_P(PSTR("uafp-led " UAFP_FW_VERSION ": illuminate-compatible LED array, "));
    write_uint(LED_ROWS);
    hal_write_P(PSTR("x"));
    write_uint(LED_COLS);
#if LED_DRIVER == LED_DRIVER_APA102
    hal_write_P(PSTR(" APA102"));
#else
    hal_write_P(PSTR(" WS2812B"));
#endif
    hal_write_P(PSTR(", send 'help' for commands\n"));
}

static void print_help(void) {
    hal_write_P(PSTR(
        "about | ver | reset | pprops | pvals | help\n"
        "l.<i>[.<i>...] light LEDs, index = row*cols+col | x clear | ff fill\n"
        "bf | df | an.<minNA*100>.<maxNA*100> | na.<NA*100> | sad.<mm>\n"
        "sb.<v> | sb.<r>.<g>.<b> brightness | sc.<v> | sc.<r>.<g>.<b> colour | ac[.0|.1]\n"
        "tr pulse trigger | trs.<width_us>.<delay_us> | tra.<0|1> pulse after every update\n"
        "ssl.<n> | ssv.<i>[.<i>...] | pseq | tseq arm | sseq step | xseq stop | qseq\n"
        "plit print lit LEDs\n"));
}

static void print_props(void) {
    hal_write_P(PSTR("{\"device\":\"uafp-led\",\"firmware_version\":\"" UAFP_FW_VERSION "\""));
    write_key_uint(PSTR(",\"led_count\":"), LED_COUNT);
    write_key_uint(PSTR(",\"array_shape\":["), LED_ROWS);
    write_key_uint(PSTR(","), LED_COLS);
    write_key_uint(PSTR("],\"led_pitch_um\":"), LED_PITCH_UM);
    write_key_uint(PSTR(",\"center_x2\":["), LED_CENTER_ROW_X2);
    write_key_uint(PSTR(","), LED_CENTER_COL_X2);
    hal_write_P(PSTR("],\"color_channels\":[\"r\",\"g\",\"b\"],\"bit_depth\":8"));
#if LED_DRIVER == LED_DRIVER_APA102
    hal_write_P(PSTR(",\"led_driver\":\"apa102\""));
#else
    hal_write_P(PSTR(",\"led_driver\":\"ws2812\""));
#endif
    write_key_uint(PSTR(",\"serpentine\":"), LED_SERPENTINE);
    hal_write_P(PSTR(",\"trigger_input_count\":1,\"trigger_output_count\":1"));
    write_key_uint(PSTR(",\"sequence_max\":"), SEQUENCE_MAX);
    write_key_uint(PSTR(",\"line_max\":"), LINE_MAX_CHARS);
    write_key_uint(PSTR(",\"led_array_distance_z_default_mm\":"), LED_DISTANCE_MM);
    hal_write_P(PSTR("}\n"));
}

static void print_values(void) {
    write_key_uint(PSTR("{\"na_x100\":"), na_x100);
    write_key_uint(PSTR(",\"distance_mm\":"), distance_mm);
    write_key_uint(PSTR(",\"color\":["), color_rgb[0]);
    write_key_uint(PSTR(","), color_rgb[1]);
    write_key_uint(PSTR(","), color_rgb[2]);
    write_key_uint(PSTR("],\"brightness\":["), brightness_rgb[0]);
    write_key_uint(PSTR(","), brightness_rgb[1]);
    write_key_uint(PSTR(","), brightness_rgb[2]);
    write_key_uint(PSTR("],\"auto_clear\":"), auto_clear);
    write_key_uint(PSTR(",\"auto_trigger\":"), auto_trigger);
    write_key_uint(PSTR(",\"trigger_width_us\":"), trigger_width_us);
    write_key_uint(PSTR(",\"trigger_delay_us\":"), trigger_delay_us);
    write_key_uint(PSTR(",\"sequence_length\":"), sequence_length);
    write_key_uint(PSTR(",\"sequence_position\":"), sequence_position);
    write_key_uint(PSTR(",\"sequence_armed\":"), sequence_armed);
    hal_write_P(PSTR("}\n"));
}

static void print_lit(void) {
    hal_write_P(PSTR("lit"));
    for (uint16_t i = 0; i < LED_COUNT; ++i) {
        if (protocol_led_lit(i)) {
            hal_write_P(PSTR("."));
            write_uint(i);
        }
    }
    hal_write_P(PSTR("\n"));
}

static void print_triple(const char *key_P, const uint8_t *rgb) {
    write_key_uint(key_P, rgb[0]);
    write_key_uint(PSTR("."), rgb[1]);
    write_key_uint(PSTR("."), rgb[2]);
    hal_write_P(PSTR("\n"));
}

/* sb / sc: one value for all channels or three values r.g.b; no argument prints. */
static void set_triple(char **args, uint8_t count, uint8_t *target, const char *key_P) {
    uint16_t values[3];
    if (count == 0) {
        print_triple(key_P, target);
        return;
    }
    if (count != 1 && count != 3) {
        error_P(PSTR("expected 1 or 3 values 0-255"));
        return;
    }
    if (!parse_all(args, count, 255, values)) {
        error_P(PSTR("value out of range: expected 0-255"));
        return;
    }
    for (uint8_t i = 0; i < 3; ++i) target[i] = (uint8_t)values[count == 1 ? 0 : i];
    display(0);
}

static void step_sequence(void) {
    if (!sequence_armed) return;
    ++sequence_position;
    clear_bitmap();
    if (sequence_position >= sequence_loaded) {
        sequence_armed = 0;
        display(0);
        return;
    }
    set_lit(sequence[sequence_position]);
    display(1);
}

static uint8_t is_command(const char *name, const char *a_P, const char *b_P) {
    return strcmp_P(name, a_P) == 0 || (b_P && strcmp_P(name, b_P) == 0);
}

static void execute(char *text) {
    char *args[MAX_ARGS];
    uint8_t count = 0;
    char *name = text;
    char *p = strchr(text, '.');
    uint16_t values[3];
    while (p) {
        *p++ = '\0';
        if (count >= MAX_ARGS) {
            error_P(PSTR("too many arguments"));
            return;
        }
        args[count++] = p;
        p = strchr(p, '.');
    }
    for (char *c = name; *c; ++c) {
        if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
    }

#define NO_ARGS()                                      \
    if (count) {                                       \
        error_P(PSTR("too many arguments"));           \
        return;                                        \
    }

    if (is_command(name, PSTR("about"), PSTR("?"))) {
        NO_ARGS();
        print_about();
    } else if (is_command(name, PSTR("help"), PSTR("h"))) {
        NO_ARGS();
        print_help();
    } else if (is_command(name, PSTR("ver"), PSTR("version"))) {
        NO_ARGS();
        hal_write_P(PSTR(UAFP_FW_VERSION "\n"));
    } else if (is_command(name, PSTR("reset"), 0)) {
        NO_ARGS();
        reset_state();
        display(0);
    } else if (is_command(name, PSTR("pprops"), PSTR("printsystemparams"))) {
        NO_ARGS();
        print_props();
    } else if (is_command(name, PSTR("pvals"), PSTR("printvals"))) {
        NO_ARGS();
        print_values();
    } else if (is_command(name, PSTR("plit"), 0)) {
        NO_ARGS();
        print_lit();
    } else if (is_command(name, PSTR("l"), PSTR("led"))) {
        uint16_t index;
        if (count == 0) {
            error_P(PSTR("l needs at least one LED index"));
            return;
        }
        for (uint8_t i = 0; i < count; ++i) {
            if (!parse_uint(args[i], LED_COUNT - 1, &index)) {
                error_P(PSTR("LED index out of range (0 to rows*cols-1)"));
                return;
            }
        }
        if (auto_clear) clear_bitmap();
        for (uint8_t i = 0; i < count; ++i) {
            parse_uint(args[i], LED_COUNT - 1, &index);
            set_lit(index);
        }
        display(auto_trigger);
    } else if (is_command(name, PSTR("x"), PSTR("xx")) || is_command(name, PSTR("clear"), 0)) {
        NO_ARGS();
        clear_bitmap();
        display(0);
    } else if (is_command(name, PSTR("ff"), PSTR("fillarray"))) {
        NO_ARGS();
        memset(lit_bitmap, 0xff, sizeof(lit_bitmap));
        display(auto_trigger);
    } else if (is_command(name, PSTR("bf"), PSTR("brightfield")) ||
               is_command(name, PSTR("df"), PSTR("darkfield"))) {
        uint8_t dark = name[0] == 'd';
        NO_ARGS();
        clear_bitmap();
        for (uint16_t i = 0; i < LED_COUNT; ++i) {
            if ((compare_led_na(i, na_x100) > 0) == dark) set_lit(i);
        }
        display(auto_trigger);
    } else if (is_command(name, PSTR("an"), PSTR("annulus"))) {
        if (count != 2 || !parse_all(args, 2, 100, values) || values[0] > values[1]) {
            error_P(PSTR("usage: an.<minNA*100>.<maxNA*100>, 0-100, min <= max"));
            return;
        }
        clear_bitmap();
        for (uint16_t i = 0; i < LED_COUNT; ++i) {
            if (compare_led_na(i, (uint8_t)values[0]) >= 0 && compare_led_na(i, (uint8_t)values[1]) <= 0) {
                set_lit(i);
            }
        }
        display(auto_trigger);
    } else if (is_command(name, PSTR("na"), PSTR("setna"))) {
        if (count > 1) {
            error_P(PSTR("too many arguments"));
            return;
        }
        if (count == 1) {
            if (!parse_uint(args[0], 100, &values[0])) {
                error_P(PSTR("NA*100 out of range: expected 0-100"));
                return;
            }
            na_x100 = (uint8_t)values[0];
        }
        write_key_uint(PSTR("na."), na_x100);
        hal_write_P(PSTR("\n"));
    } else if (is_command(name, PSTR("sad"), PSTR("setarraydistance"))) {
        if (count > 1) {
            error_P(PSTR("too many arguments"));
            return;
        }
        if (count == 1) {
            if (!parse_uint(args[0], 10000, &values[0]) || values[0] == 0) {
                error_P(PSTR("distance out of range: expected 1-10000 mm"));
                return;
            }
            distance_mm = values[0];
        }
        write_key_uint(PSTR("sad."), distance_mm);
        hal_write_P(PSTR("\n"));
    } else if (is_command(name, PSTR("sb"), PSTR("setbrightness"))) {
        set_triple(args, count, brightness_rgb, PSTR("sb."));
    } else if (is_command(name, PSTR("sc"), PSTR("setcolor"))) {
        set_triple(args, count, color_rgb, PSTR("sc."));
    } else if (is_command(name, PSTR("ac"), PSTR("autoclear"))) {
        if (count > 1 || (count == 1 && !parse_uint(args[0], 1, &values[0]))) {
            error_P(PSTR("usage: ac (toggle), ac.0 or ac.1"));
            return;
        }
        auto_clear = count ? (uint8_t)values[0] : (uint8_t)!auto_clear;
        write_key_uint(PSTR("ac."), auto_clear);
        hal_write_P(PSTR("\n"));
    } else if (is_command(name, PSTR("tr"), PSTR("trig"))) {
        /* Optional trigger channel index: only channel 0 exists. */
        if (count > 1 || (count == 1 && !parse_uint(args[0], 0, &values[0]))) {
            error_P(PSTR("usage: tr or tr.0 (one trigger output)"));
            return;
        }
        hal_trigger_pulse(trigger_delay_us, trigger_width_us);
    } else if (is_command(name, PSTR("trs"), PSTR("trigsetup"))) {
        if (count != 2 || !parse_uint(args[0], 60000, &values[0]) ||
            !parse_uint(args[1], 60000, &values[1]) || values[0] == 0) {
            error_P(PSTR("usage: trs.<width_us 1-60000>.<delay_us 0-60000>"));
            return;
        }
        trigger_width_us = values[0];
        trigger_delay_us = values[1];
    } else if (is_command(name, PSTR("tra"), 0)) {
        if (count > 1 || (count == 1 && !parse_uint(args[0], 1, &values[0]))) {
            error_P(PSTR("usage: tra.0 or tra.1"));
            return;
        }
        if (count) auto_trigger = (uint8_t)values[0];
        write_key_uint(PSTR("tra."), auto_trigger);
        hal_write_P(PSTR("\n"));
    } else if (is_command(name, PSTR("ssl"), PSTR("setseqlength"))) {
        if (count != 1 || !parse_uint(args[0], SEQUENCE_MAX, &values[0])) {
            error_P(PSTR("usage: ssl.<n>, n up to sequence_max in pprops"));
            return;
        }
        sequence_armed = 0;
        sequence_length = values[0];
        sequence_loaded = 0;
        sequence_position = 0;
    } else if (is_command(name, PSTR("ssv"), PSTR("setseqvalue"))) {
        uint16_t index;
        if (count == 0) {
            error_P(PSTR("ssv needs at least one LED index"));
            return;
        }
        if (sequence_loaded + count > sequence_length) {
            error_P(PSTR("sequence full: set its length with ssl first"));
            return;
        }
        for (uint8_t i = 0; i < count; ++i) {
            if (!parse_uint(args[i], LED_COUNT - 1, &index)) {
                error_P(PSTR("LED index out of range (0 to rows*cols-1)"));
                return;
            }
        }
        for (uint8_t i = 0; i < count; ++i) {
            parse_uint(args[i], LED_COUNT - 1, &index);
            sequence[sequence_loaded++] = index;
        }
    } else if (is_command(name, PSTR("pseq"), PSTR("printseq"))) {
        NO_ARGS();
        write_key_uint(PSTR("seq."), sequence_loaded);
        for (uint16_t i = 0; i < sequence_loaded; ++i) write_key_uint(PSTR("."), sequence[i]);
        hal_write_P(PSTR("\n"));
    } else if (is_command(name, PSTR("tseq"), PSTR("trigseq"))) {
        NO_ARGS();
        if (sequence_loaded == 0 || sequence_loaded != sequence_length) {
            error_P(PSTR("sequence not loaded: send ssl.<n> then n indices with ssv"));
            return;
        }
        hal_take_trigger_edges(); /* forget edges from before arming */
        sequence_position = 0;
        sequence_armed = 1;
        clear_bitmap();
        set_lit(sequence[0]);
        display(1);
    } else if (is_command(name, PSTR("sseq"), PSTR("stepseq"))) {
        NO_ARGS();
        if (!sequence_armed) {
            error_P(PSTR("no sequence armed: send tseq first"));
            return;
        }
        step_sequence();
    } else if (is_command(name, PSTR("xseq"), PSTR("stopseq"))) {
        NO_ARGS();
        sequence_armed = 0;
        clear_bitmap();
        display(0);
    } else if (is_command(name, PSTR("qseq"), 0)) {
        NO_ARGS();
        write_key_uint(PSTR("seq."), sequence_position);
        write_key_uint(PSTR("."), sequence_loaded);
        write_key_uint(PSTR("."), sequence_armed);
        hal_write_P(PSTR("\n"));
    } else {
        error_P(PSTR("unknown command (send 'help' for the list)"));
    }
#undef NO_ARGS
}

/* ---- entry points -------------------------------------------------------------------- */

void protocol_init(void) {
    line_length = 0;
    line_overflow = 0;
    line_binary = 0;
    reset_state();
    hal_show();
}

void protocol_feed(uint8_t byte) {
    if (byte == '\r') return;
    if (byte != '\n') {
        if (byte < 0x20 || byte > 0x7e) {
            line_binary = 1;
        } else if (line_length >= LINE_MAX_CHARS) {
            line_overflow = 1;
        } else {
            line_buffer[line_length++] = (char)byte;
        }
        return;
    }
    if (line_overflow) {
        error_P(PSTR("line too long (see line_max in pprops)"));
        end_reply();
    } else if (line_binary) {
        error_P(PSTR("non-printable bytes in command"));
        end_reply();
    } else if (line_length > 0) {
        line_buffer[line_length] = '\0';
        execute(line_buffer);
        end_reply();
    }
    line_length = 0;
    line_overflow = 0;
    line_binary = 0;
}

void protocol_poll(void) {
    uint16_t edges = hal_take_trigger_edges();
    while (edges-- && sequence_armed) step_sequence();
}
