/*
 * LED output layer: writes the protocol's LED state to a WS2812B (bit-banged on PORTD)
 * or APA102 (hardware SPI) chain, chosen at compile time with LED_DRIVER.
 */
#ifndef UAFP_LED_DRIVER_H
#define UAFP_LED_DRIVER_H

#include <stdint.h>

void led_driver_begin(void);
/* Send one frame: LED at strip position p shows `rgb` when lit(index of p), else black. */
void led_driver_show(void);

#endif
