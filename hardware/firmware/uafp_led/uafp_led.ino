/*
 * uafp-led: illuminate-compatible LED-array firmware for ATmega328P boards (Uno, Nano).
 *
 * This file is the hardware glue only: serial port, trigger pins and the LED driver.
 * The command protocol lives in protocol.c, the LED output in led_driver.cpp, build
 * options in config.h. See hardware/README.md for wiring and the command list.
 */
#include <avr/pgmspace.h>

#include "config.h"
#include "led_driver.h"
#include "protocol.h"

static volatile uint16_t trigger_edges;

static void on_trigger_edge() { ++trigger_edges; }

extern "C" void hal_write(const char *text) { Serial.write(text); }

extern "C" void hal_write_P(const char *text) {
    char c;
    while ((c = (char)pgm_read_byte(text++)) != '\0') Serial.write(c);
}

extern "C" void hal_show(void) { led_driver_show(); }

static void wait_us(uint16_t us) {
    // delayMicroseconds is only exact up to ~16 ms; split long waits.
    while (us > 10000) {
        delayMicroseconds(10000);
        us -= 10000;
    }
    if (us) delayMicroseconds(us);
}

extern "C" void hal_trigger_pulse(uint16_t delay_us, uint16_t width_us) {
    wait_us(delay_us);
    digitalWrite(TRIGGER_OUT_PIN, HIGH);
    wait_us(width_us);
    digitalWrite(TRIGGER_OUT_PIN, LOW);
}

extern "C" uint16_t hal_take_trigger_edges(void) {
    noInterrupts();
    uint16_t edges = trigger_edges;
    trigger_edges = 0;
    interrupts();
    return edges;
}

void setup() {
    pinMode(TRIGGER_OUT_PIN, OUTPUT);
    digitalWrite(TRIGGER_OUT_PIN, LOW);
    pinMode(TRIGGER_IN_PIN, INPUT);
    attachInterrupt(digitalPinToInterrupt(TRIGGER_IN_PIN), on_trigger_edge, RISING);
    led_driver_begin();
    Serial.begin(SERIAL_BAUD);
    protocol_init();
}

void loop() {
    while (Serial.available() > 0) protocol_feed((uint8_t)Serial.read());
    protocol_poll();
}
