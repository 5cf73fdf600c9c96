/*
 * Command protocol of the uafp-led firmware (the "illuminate" command set), kept apart
 * from the LED driver: it only keeps state and calls the hal_* functions below, which
 * the sketch implements for the real board.
 */
#ifndef UAFP_LED_PROTOCOL_H
#define UAFP_LED_PROTOCOL_H

#include <stdint.h>

#include "config.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Protocol side: the sketch feeds every received byte and polls for triggers. */
void protocol_init(void);
void protocol_feed(uint8_t byte);
void protocol_poll(void);
/* LED state as the driver needs it: is LED `index` lit, and its 8-bit drive per channel. */
uint8_t protocol_led_lit(uint16_t index);
void protocol_output_rgb(uint8_t rgb[3]);

/* Hardware side, implemented by the sketch. */
void hal_write(const char *text);   /* text in RAM */
void hal_write_P(const char *text); /* text in flash (PSTR) */
void hal_show(void);                /* push the LED state to the LEDs; returns when latched */
void hal_trigger_pulse(uint16_t delay_us, uint16_t width_us);
uint16_t hal_take_trigger_edges(void); /* rising edges on the trigger input since last call */

#ifdef __cplusplus
}
#endif

#endif
