/*
 * Build options of the uafp-led firmware. Every value can be overridden from the
 * command line, e.g. `make LED_ROWS=8 LED_COLS=8 LED_DRIVER=APA102` (see Makefile).
 */
#ifndef UAFP_LED_CONFIG_H
#define UAFP_LED_CONFIG_H

#define UAFP_FW_VERSION "1.0.0"

/* LED driver: 1 = WS2812B/NeoPixel (one data pin), 2 = APA102/DotStar (hardware SPI). */
#define LED_DRIVER_WS2812 1
#define LED_DRIVER_APA102 2
#ifndef LED_DRIVER
#define LED_DRIVER LED_DRIVER_WS2812
#endif

/* Matrix size: protocol index = row * LED_COLS + col (row 0 = first row along the strip). */
#ifndef LED_ROWS
#define LED_ROWS 16
#endif
#ifndef LED_COLS
#define LED_COLS 16
#endif
#define LED_COUNT ((uint16_t)LED_ROWS * (uint16_t)LED_COLS)

/* 1 = serpentine (zig-zag) wiring: odd rows run right-to-left along the strip. */
#ifndef LED_SERPENTINE
#define LED_SERPENTINE 1
#endif

/* LED pitch in micrometres and default LED-plane-to-sample distance in millimetres. */
#ifndef LED_PITCH_UM
#define LED_PITCH_UM 10000
#endif
#ifndef LED_DISTANCE_MM
#define LED_DISTANCE_MM 50
#endif

/* On-axis LED, given as twice the row/col index so a centre between LEDs (7.5) fits. */
#ifndef LED_CENTER_ROW_X2
#define LED_CENTER_ROW_X2 (LED_ROWS - 1)
#endif
#ifndef LED_CENTER_COL_X2
#define LED_CENTER_COL_X2 (LED_COLS - 1)
#endif

/* Power-on defaults: brightness 0-255 per channel, numerical aperture * 100. */
#ifndef LED_DEFAULT_BRIGHTNESS
#define LED_DEFAULT_BRIGHTNESS 64
#endif
#ifndef LED_DEFAULT_NA_X100
#define LED_DEFAULT_NA_X100 25
#endif

/* Pins (Arduino numbering). WS2812 data must be on PORTD (D2..D7). */
#ifndef WS2812_PIN
#define WS2812_PIN 6
#endif
#ifndef TRIGGER_OUT_PIN
#define TRIGGER_OUT_PIN 5
#endif
/* Trigger input must be an external-interrupt pin: D2 (INT0) or D3 (INT1). */
#ifndef TRIGGER_IN_PIN
#define TRIGGER_IN_PIN 2
#endif

/* Longest accepted command line (characters, without the line ending). */
#ifndef LINE_MAX_CHARS
#define LINE_MAX_CHARS 120
#endif
/* Most entries a hardware-triggered sequence can hold (2 bytes of RAM each). */
#ifndef SEQUENCE_MAX
#define SEQUENCE_MAX 256
#endif
/* Most '.'-separated arguments in one command. */
#define MAX_ARGS 64

#define SERIAL_BAUD 115200

#endif
